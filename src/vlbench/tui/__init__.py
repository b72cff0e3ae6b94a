"""vlbench's Textual workbench: Inputs, Parameters, Queue, Preview and History over the run store.

Importing this package imports nothing: `launch` holds the `tui` subcommand, `app` the App.
"""
