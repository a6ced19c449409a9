"""The officially released weights by name, each with its preprocessing card.

Sources: the BiRefNet README model zoo and Hugging Face cards (ZhengPeng7/BiRefNet), the U-2-Net and DIS READMEs.
A Hugging Face repo id or a release file name (``BiRefNet_HR-general-epoch_130.pth``, also a downloaded copy under
that name) finds its entry; :func:`birefnet.models.load_model` then gives the model that card unless the file
stores its own or the caller passes one. ``docs/model-zoo.md`` is generated from :data:`MODEL_ZOO`.
"""

from __future__ import annotations

import dataclasses
from pathlib import PurePath

from birefnet.preprocessing import PreprocessingCard

__all__ = ["MODEL_ZOO", "ZooEntry", "family_card", "find_zoo_entry", "zoo_markdown"]


@dataclasses.dataclass(frozen=True)
class ZooEntry:
    """One released model: where it lives, what it is, and the card its weights were trained with."""

    name: str
    family: str
    card: PreprocessingCard
    repo_id: str | None = None
    files: tuple[str, ...] = ()
    backbone: str = ""
    note: str = ""


def _birefnet(
    name: str, files: tuple[str, ...], task: str, size=(1024, 1024), backbone="swin_v1_l", note=""
) -> ZooEntry:
    """An official BiRefNet release: Hugging Face repo ``ZhengPeng7/<name>``, ImageNet normalisation."""
    card = PreprocessingCard(input_size=size, normalization="imagenet", task=task)
    return ZooEntry(name, "BiRefNet", card, f"ZhengPeng7/{name}", files, backbone, note)


_U2NET = PreprocessingCard(input_size=(320, 320), normalization="u2net", task="SOD")
_ISNET = PreprocessingCard(input_size=(1024, 1024), normalization="isnet", task="DIS5K")

#: Released weights, by the name users know them by (the Hugging Face repo name where there is one).
MODEL_ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _birefnet("BiRefNet", ("BiRefNet-general-epoch_244.pth",), "General"),
        _birefnet(
            "BiRefNet_lite",
            ("BiRefNet-general-bb_swin_v1_tiny-epoch_232.pth",),
            "General",
            backbone="swin_v1_t",
        ),
        _birefnet("BiRefNet_T", (), "General", backbone="swin_v1_t", note="alias of lite"),
        _birefnet(
            "BiRefNet_lite-2K",
            ("BiRefNet_lite-general-2K-epoch_232.pth",),
            "General-2K",
            size=(1440, 2560),
            backbone="swin_v1_t",
        ),
        _birefnet("BiRefNet_HR", ("BiRefNet_HR-general-epoch_130.pth",), "General", (2048, 2048)),
        _birefnet(
            "BiRefNet_512x512",
            ("BiRefNet-general-resolution_512x512-fp16-epoch_216.pth",),
            "General",
            (512, 512),
            note="fp16 weights",
        ),
        _birefnet(
            "BiRefNet_dynamic",
            ("BiRefNet_dynamic-general-epoch_174.pth",),
            "General",
            None,
            note="trained at random sizes 256-2304; predicts at each image's size",
        ),
        _birefnet("BiRefNet-matting", ("BiRefNet-matting-epoch_100.pth",), "Matting"),
        _birefnet(
            "BiRefNet_HR-matting",
            ("BiRefNet_HR-matting-epoch_135.pth",),
            "Matting",
            (2048, 2048),
        ),
        _birefnet("BiRefNet_lite-matting", (), "Matting", backbone="swin_v1_t"),
        _birefnet("BiRefNet_dynamic-matting", (), "Matting", None),
        _birefnet("BiRefNet-portrait", ("BiRefNet-portrait-epoch_150.pth",), "Portrait"),
        _birefnet("BiRefNet-DIS5K", ("BiRefNet-DIS-epoch_590.pth",), "DIS5K"),
        _birefnet(
            "BiRefNet-DIS5K-TR_TEs",
            ("BiRefNet-massive-TR_DIS5K_TR_TEs-epoch_420.pth", "BiRefNet-massive-epoch_240.pth"),
            "DIS5K",
            note="trained on DIS-TR and DIS-TE1..4",
        ),
        _birefnet("BiRefNet-HRSOD", ("BiRefNet-HRSOD_DHU-epoch_115.pth",), "HRSOD"),
        _birefnet("BiRefNet-COD", ("BiRefNet-COD-epoch_125.pth",), "COD"),
        _birefnet("BiRefNet-legacy", (), "", note="layout before 2024-05-02"),
        ZooEntry("u2net", "U2Net", _U2NET, None, ("u2net.pth",), note="Qin et al. 2020, trained on DUTS-TR"),
        ZooEntry("u2netp", "U2Net", _U2NET, None, ("u2netp.pth",), note="1.13 M parameters"),
        ZooEntry("isnet", "ISNet", _ISNET, None, ("isnet.pth",), note="Qin et al. 2022, trained on DIS-TR"),
        ZooEntry(
            "isnet-general-use",
            "ISNet",
            _ISNET.replace(task="General"),
            None,
            ("isnet-general-use.pth",),
            note="DIS authors' general-use weights",
        ),
    )
}

#: Each family's card when nothing better is known (a file without a stored card or a known name).
_FAMILY_CARDS = {
    "BiRefNet": PreprocessingCard(input_size=(1024, 1024), normalization="imagenet"),
    "U2Net": _U2NET.replace(task=""),
    "ISNet": _ISNET.replace(task=""),
    "ISNetGTEncoder": _ISNET.replace(task=""),
}


def family_card(family: str) -> PreprocessingCard:
    """The default card of a model family (class name)."""
    return _FAMILY_CARDS.get(family, PreprocessingCard())


def find_zoo_entry(reference: str) -> ZooEntry | None:
    """The entry for a Hugging Face repo id (``ZhengPeng7/BiRefNet_HR``, revision ignored), a zoo name, or a release
    file name (the file's base name; a path is fine)."""
    text = str(reference).removeprefix("hf:").split("@")[0]
    base = PurePath(text).name
    for entry in MODEL_ZOO.values():
        if text == entry.repo_id or text == entry.name or base in entry.files:
            return entry
    return None


def zoo_markdown() -> str:
    """The zoo as a Markdown table (``birefnet zoo`` prints it; ``docs/model-zoo.md`` holds it)."""
    rows = [
        "| name | family | backbone | input size (HxW) | normalisation | task | source | release files | note |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for e in MODEL_ZOO.values():
        size = "x".join(map(str, e.card.input_size)) if e.card.input_size else "own size, rounded down to 32"
        source = e.repo_id or "release file"
        files = ", ".join(f"`{f}`" for f in e.files) or "-"
        rows.append(
            f"| {e.name} | {e.family} | {e.backbone or '-'} | {size} | {e.card.normalization} | {e.card.task or '-'} "
            f"| {source} | {files} | {e.note or '-'} |"
        )
    return "\n".join(rows) + "\n"
