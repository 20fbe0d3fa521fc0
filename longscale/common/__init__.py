"""Helpers every longscale package may import; this package imports no other longscale package (a leaf).

Config layering (`configcli`), the base error types (`errors`), and the shared readers and loaders live here so
that datafactory, worker, api, finetune, pretrain and evaluation never import each other just for a helper.
"""
