"""Dataset import: booru search and download, booru tags as captions, duplicate filter.

What a front end (CLI, Gradio panel) calls; nothing heavy is imported here:

- ``download.ImportOptions`` (site, tags, dataset folder, name, repeats, limit, filters, caption
  options, base URL, credentials);
  ``download.search(options, events, stop)`` -> ``SearchResult`` (posts with ``preview_url`` and
  ``page_url`` for a preview grid, skip counts), ``download.download_posts(options, posts, events,
  stop)`` or ``download.import_booru(options, events, stop)`` -> ``ImportResult``.
  Progress comes as ``events.progress("searching" | "downloading", done, total, text)``; a
  ``StopToken`` stops between requests and chunks (an unfinished file resumes next time).
- ``dedupe.scan(folder, DedupeOptions(...), events, stop)`` -> ``DedupeScan`` (``groups`` with the
  copy to keep and the duplicates, ``review`` pairs); ``dedupe.apply(scan)`` moves the duplicates
  to ``_duplicates/`` and writes the report; for a review panel ``dedupe.move_to_duplicates``,
  ``dedupe.restore_from_duplicates`` and ``dedupe.keep_both`` (remember "not duplicates").

Modules: ``http`` (polite urllib client), ``clients`` (Danbooru, Gelbooru, Gelbooru 0.2,
Moebooru), ``booru_tags`` (tags -> caption), ``download``, ``dedupe``.
"""
