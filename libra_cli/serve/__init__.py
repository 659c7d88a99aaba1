"""``libra serve``: :mod:`~libra_cli.serve.server` (requests, model cache, streaming; no Gradio) and
:mod:`~libra_cli.serve.page` (the Gradio page, the ``serve`` extra)."""
