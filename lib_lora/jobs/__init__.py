"""Use-cases: what the CLI, the webui tab, the standalone app and the HTTP API call.

DESIGN.md drew this as one ``jobs.py``; it is a package with one module per use-case so each
stays small. Nothing heavy is imported here.
"""
