"""The Libra model: config, encoders, connectors and the causal LMs (one per text backbone)."""

from libra_cli.model.modeling import (
    BACKBONES,
    LibraMixin,
    register_auto_classes,
)

__all__ = ["BACKBONES", "LibraMixin", "register_auto_classes"]
