"""Caption editor core: load a dataset's captions, filter, batch-edit, undo/redo, preview and save safely.

A front end holds one :class:`CaptionSession` per user::

    session = CaptionSession.open("dataset", LoadOptions(caption_extension=".txt"))
    session.set_filter(TagFilter.build(include="1girl"))
    session.add_tags("irene", position="front")
    session.underscores_to_spaces()
    session.dedupe()
    session.preview()                 # how many captions change, before/after samples
    result = session.save()           # only changed files, atomically, previous versions backed up
    result.unresolved                 # captions edited on disk meanwhile: save(choices={rel: "overwrite"})
"""

from lib_lora.captions.backups import BACKUP_DIR_NAME, BackupInfo, list_backups, read_backup
from lib_lora.captions.filters import SEARCH_MODES, TagFilter, filter_items, search_tags, tag_matcher
from lib_lora.captions.model import (
    DEFAULT_CAPTION_EXTENSION,
    TAGGER_SIDECAR_SUFFIX,
    CaptionItem,
    Dataset,
    DatasetStats,
    FileProblem,
    FolderStats,
    LoadOptions,
    TagCount,
    dataset_stats,
    load_dataset,
    parse_caption,
    tag_frequency,
)
from lib_lora.captions.ops import (
    SORT_KEYS,
    AddTags,
    Dedupe,
    MoveToFront,
    Operation,
    RemoveTags,
    ReplaceText,
    SetCaption,
    SortTags,
    UnderscoresToSpaces,
    common_tags,
    run_operation,
)
from lib_lora.captions.session import (
    CONFLICT_CHOICES,
    CaptionSession,
    Conflict,
    EditResult,
    PendingChange,
    Preview,
    SaveResult,
    summary_line,
)

__all__ = [
    "BACKUP_DIR_NAME",
    "CONFLICT_CHOICES",
    "DEFAULT_CAPTION_EXTENSION",
    "SEARCH_MODES",
    "SORT_KEYS",
    "TAGGER_SIDECAR_SUFFIX",
    "AddTags",
    "BackupInfo",
    "CaptionItem",
    "CaptionSession",
    "Conflict",
    "Dataset",
    "DatasetStats",
    "Dedupe",
    "EditResult",
    "FileProblem",
    "FolderStats",
    "LoadOptions",
    "MoveToFront",
    "Operation",
    "PendingChange",
    "Preview",
    "RemoveTags",
    "ReplaceText",
    "SaveResult",
    "SetCaption",
    "SortTags",
    "TagCount",
    "TagFilter",
    "UnderscoresToSpaces",
    "common_tags",
    "dataset_stats",
    "filter_items",
    "list_backups",
    "load_dataset",
    "parse_caption",
    "read_backup",
    "run_operation",
    "search_tags",
    "summary_line",
    "tag_frequency",
    "tag_matcher",
]
