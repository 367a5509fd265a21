"""`KeyMapping`, one sgm -> diffusers key step, and `KeyPlan`, the list the
`plan_*` functions of the component modules fill."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class KeyMapping:
    """One step of the conversion: an sgm key to one or more diffusers keys."""

    component: str
    """'unet', 'vae' or 'image_encoder'."""
    source: str | None
    """Full sgm key; None for a tensor the sgm layout lacks (synthesised)."""
    targets: tuple[str, ...]
    """Keys in the component's state dict."""
    kind: str = "copy"
    """copy | conv_to_linear (1x1 conv -> Linear) | transpose | split_qkv | a synth_* kind."""
    shape: tuple[int, ...] = ()
    """Shape of a synthesised tensor."""


@dataclass
class KeyPlan:
    """The mappings in plan order; `wb` adds a layer's weight and bias."""

    entries: list[KeyMapping] = field(default_factory=list)

    def add(self, component: str, src: str | None, dst: str, kind: str = "copy", shape=()) -> None:
        self.entries.append(KeyMapping(component, src, (dst,), kind, tuple(shape)))

    def wb(self, component: str, src: str, dst: str, kind: str = "copy") -> None:
        self.add(component, src + ".weight", dst + ".weight", kind)
        self.add(component, src + ".bias", dst + ".bias")
