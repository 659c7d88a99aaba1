"""Clinical Contrastive Decoding (CCD): the Libra authors' training-free decoder, fast and batched.

- :mod:`~libra_cli.ccd.labels`: label probabilities -> guidance sentence and token bias (the reference's rules);
- :mod:`~libra_cli.ccd.sources`: where the labels come from (``--ccd-labels`` file, or an expert);
- :mod:`~libra_cli.ccd.experts`: the reference's experts (torchxrayvision DenseNet, MedSigLIP-448);
- :mod:`~libra_cli.ccd.streams`: both prompts' KV caches, one batch, shared image prefix;
- :mod:`~libra_cli.ccd.scoring`: one decoding step's arithmetic, the stop rule;
- :mod:`~libra_cli.ccd.engine` / :mod:`~libra_cli.ccd.beam`: greedy and sampling, beam search (an extension).

``libra_cli.generation.generate`` is the entry point (``GenerationSettings(decoding="ccd")``).
"""
