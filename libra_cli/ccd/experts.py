"""The reference's two expert classifiers, batched: torchxrayvision's DenseNet and MedSigLIP-448 zero-shot.

Both return ``{label: probability}`` per image in the reference's order (``ccd_utils.py``
``predict_chexpert_labels`` / ``predict_medsiglip_labels``), the view last as ``"Frontal"`` and
``"Lateral"``. Each runs once per batch of studies on the current image. Weights are downloaded
once and read from the local cache afterwards; with ``HF_HUB_OFFLINE=1`` a missing model is a
one-line error naming the download command.

- ``densenet``: ``xrv.models.DenseNet(weights="densenet121-res224-chex")`` + ``xinario.ViewModel``.
  torchxrayvision imports torchvision, whose PyPI wheels are built against the PyPI (CUDA) torch:
  it works where torch and torchvision are a matching pair, not beside a CPU-only torch build.
- ``medsiglip`` (``google/medsiglip-448``, gated: accept its terms and log in once), or any
  CLIP/SigLIP-style folder or hub id: the prompt pair "a chest X-ray with {label}" / "... with no
  {label}" per finding, softmaxed pairwise.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import Any

import numpy as np
import torch

from libra_cli.ccd.labels import Labels
from libra_cli.checkpoint.hub import hub_folder, offline
from libra_cli.console import quiet_transformers
from libra_cli.errors import InputError, ModelLoadError
from libra_cli.images import load_image

MEDSIGLIP_ID = "google/medsiglip-448"
# predict_medsiglip_labels' ``findings`` (U:63-77): the 13 CheXpert labels in this order
FINDINGS = (
    "Atelectasis", "Cardiomegaly", "Consolidation", "Edema", "Enlarged Cardiomediastinum", "Fracture",
    "Lung Lesion", "Lung Opacity", "Pleural Effusion", "Pneumonia", "Pneumothorax", "Pleural Other",
    "Support Devices",
)
DENSENET_WEIGHTS = "densenet121-res224-chex"
VIEW_WEIGHTS_FILE = "xinario_chestViewSplit_resnet-50.pt"
DENSENET_DOWNLOAD = ("python -c \"import torchxrayvision as xrv; xrv.models.DenseNet(weights='densenet121-res224-chex'); "
                     "xrv.baseline_models.xinario.ViewModel()\"")
_experts: dict[tuple[str, str], Any] = {}


def study_image(sample: Any) -> Any:
    """The current image of a study as a PIL image (the experts classify the current study)."""
    image = sample.current
    if callable(image) and not isinstance(image, (str, bytes, bytearray)):
        image = image()
    if isinstance(image, (np.ndarray, torch.Tensor)):
        raise InputError("a CCD expert needs the original image, not preprocessed pixels; pass the image file, "
                         "or give the labels with --ccd-labels")
    return load_image(image)


def get_expert(name: str, device: str | None = None) -> Any:
    """The expert called ``name`` (densenet | medsiglip | a SigLIP/CLIP folder or hub id), loaded once per process."""
    dev = device or "cpu"
    key = (name.lower() if name.lower() in ("densenet", "medsiglip") else name, dev)
    if key not in _experts:
        if key[0] == "densenet":
            _experts[key] = DenseNetExpert(dev)
        else:
            _experts[key] = ZeroShotExpert(MEDSIGLIP_ID if key[0] == "medsiglip" else name, dev)
    return _experts[key]


def check_expert(name: str) -> None:
    """Fail now, in one line, when the expert cannot be loaded (before minutes of loading the Libra model)."""
    if name.lower() == "densenet":
        _check_xrv_weights(_import_xrv())
    else:
        hub_folder(MEDSIGLIP_ID if name.lower() == "medsiglip" else name, what="CCD expert")


def densenet_labels(pathologies: list[str], scores: Any, view_targets: list[str], view_probs: Any) -> Labels:
    """predict_chexpert_labels' dict (U:163-165): named pathologies in model order, then the view softmax."""
    out: Labels = {label: float(s) for label, s in zip(pathologies, scores, strict=True) if label}
    for label, p in zip(view_targets, view_probs, strict=True):
        out[label] = float(p)
    return out


def _import_xrv() -> Any:
    try:
        import torchxrayvision as xrv
    except ImportError as exc:
        raise InputError(
            "the DenseNet expert needs torchxrayvision: pip install torchxrayvision \"torch==<your torch version>\" "
            "(pinning torch keeps pip from swapping it); or use --ccd-expert medsiglip or --ccd-labels FILE"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - torchvision fails at import time when built for another torch
        raise InputError(
            f"torchxrayvision is installed but torchvision does not load with this torch ({torch.__version__}): "
            f"{str(exc).splitlines()[0]}; install the torchvision build made for your torch, "
            "or use --ccd-expert medsiglip or --ccd-labels FILE"
        ) from exc
    return xrv


class DenseNetExpert:
    """torchxrayvision ``densenet121-res224-chex`` (calibrated outputs, 0.5 = operating point) + view model."""

    def __init__(self, device: str) -> None:
        xrv = _import_xrv()
        self.xrv = xrv
        self.device = device
        _check_xrv_weights(xrv)
        try:
            with contextlib.redirect_stdout(sys.stderr):  # xrv prints download notices on stdout
                self.chex = xrv.models.DenseNet(weights=DENSENET_WEIGHTS).to(device).eval()
                self.view = xrv.baseline_models.xinario.ViewModel().to(device).eval()
        except Exception as exc:  # noqa: BLE001 - network and file errors vary
            raise ModelLoadError(f"cannot load the DenseNet expert ({exc}); download its weights once with: "
                                 f"{DENSENET_DOWNLOAD}") from exc

    def preprocess(self, image: Any) -> np.ndarray:
        """U:129-147: grey [-1024, 1024], center crop, 224 px -> ``[1, 224, 224]``."""
        xrv = self.xrv
        img = xrv.datasets.normalize(np.array(image.convert("RGB")), 255)
        img = img.mean(2)[None, ...] if img.ndim == 3 else img[None, ...]
        img = xrv.datasets.XRayCenterCrop()(img)
        return xrv.datasets.XRayResizer(224)(img)

    def predict(self, images: list[Any]) -> list[Labels]:
        x = torch.from_numpy(np.stack([self.preprocess(im) for im in images])).float().to(self.device)
        with torch.inference_mode():
            scores = self.chex(x).cpu().numpy()
            views = torch.softmax(self.view(x), dim=1).cpu().numpy()
        return [densenet_labels(list(self.chex.pathologies), scores[i], list(self.view.targets), views[i])
                for i in range(len(images))]


def _check_xrv_weights(xrv: Any) -> None:
    """Offline (``HF_HUB_OFFLINE=1``): both weight files must already be in torchxrayvision's cache."""
    if not offline():
        return
    folder = os.path.expanduser(os.path.join("~", ".torchxrayvision", "models_data"))
    url = xrv.models.model_urls[DENSENET_WEIGHTS]["weights_url"]
    missing = [f for f in (os.path.basename(url), VIEW_WEIGHTS_FILE) if not os.path.isfile(os.path.join(folder, f))]
    if missing:
        raise ModelLoadError(f"the DenseNet expert's weights ({', '.join(missing)}) are not in {folder} and "
                             f"HF_HUB_OFFLINE is set; download them once online: {DENSENET_DOWNLOAD}")


class ZeroShotExpert:
    """predict_medsiglip_labels (U:85-125), batched: 13 prompt pairs + the view pair per image."""

    def __init__(self, name: str, device: str) -> None:
        from transformers import AutoModel, AutoProcessor


        quiet_transformers()
        folder = hub_folder(name, what="CCD expert")
        try:
            self.model = AutoModel.from_pretrained(folder).to(device).eval()
            self.processor = AutoProcessor.from_pretrained(folder)
        except Exception as exc:  # noqa: BLE001
            raise ModelLoadError(f"cannot load the CCD expert {name!r} as a zero-shot image-text model: {exc}") from exc
        self.device = device
        self.prompts: list[str] = []
        for label in FINDINGS:
            self.prompts += [f"a chest X-ray with {label.lower()}", f"a chest X-ray with no {label.lower()}"]
        self.prompts += ["Frontal view", "Lateral view"]

    def predict(self, images: list[Any]) -> list[Labels]:
        rgb = [im if im.mode == "RGB" else im.convert("RGB") for im in images]
        inputs = self.processor(text=self.prompts, images=rgb, padding="max_length", return_tensors="pt").to(self.device)
        with torch.inference_mode():
            logits = self.model(**inputs).logits_per_image  # [N, prompts]
        pairs = torch.softmax(logits.float().view(len(images), -1, 2), dim=-1)[..., 0].cpu()
        out = []
        for row in pairs:
            labels: Labels = {label: float(p) for label, p in zip(FINDINGS, row[:-1].tolist(), strict=True)}
            labels["Frontal"] = float(row[-1])
            labels["Lateral"] = 1 - labels["Frontal"]
            out.append(labels)
        return out
