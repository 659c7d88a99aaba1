"""The Libra model: config, encoders, connectors and the causal LMs (one per text backbone)."""

from libra_cli.model.modeling import (
    BACKBONES,
    IGNORE_INDEX,
    IMAGE_TOKEN_INDEX,
    LibraMixin,
    register_auto_classes,
)

__all__ = ["BACKBONES", "IGNORE_INDEX", "IMAGE_TOKEN_INDEX", "LibraMixin", "register_auto_classes"]
