"""Dataset preparation from raw MIMIC-CXR: prior pairing, report sections, training/eval files.

Submodules import pandas/pyarrow lazily so that ``libra --help`` stays fast:

- :mod:`libra_cli.data.pairing` -- ``libra data pair-priors``
- :mod:`libra_cli.data.sections` -- ``libra data extract-sections``
- :mod:`libra_cli.data.build` -- ``libra data build``
"""

from __future__ import annotations

FINDINGS_QUERY = "Provide a detailed description of the findings in the radiology image."
