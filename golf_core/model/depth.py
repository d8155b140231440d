"""Virtual depth: which physical block runs at each layer of a forward pass.

A `LayerSchedule` is plain data that the quantization diagnostics (hidden-state error per
virtual layer), QAT's "core" selection and the routing tables read. The baseline GPT and PR
#363's `RecurrentGPT` describe themselves with one; PR #54 and PR #325 carry their own schedule
types with the same `virtual_to_physical` / `cycle` / `depth` fields.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class VirtualLayer:
    """One layer of the forward pass: block `physical`, run for the `cycle`-th time (0 on its
    first use); `attn` False where the layer runs its MLP only."""

    physical: int
    cycle: int = 0
    attn: bool = True


@dataclass(frozen=True)
class LayerSchedule:
    """Virtual layers in order, and the U-Net hinge: the first `num_encoder` layers push their
    output, the last `num_decoder` pop it LIFO while skips remain."""

    layers: tuple[VirtualLayer, ...]
    num_encoder: int
    num_decoder: int

    @classmethod
    def straight(cls, num_layers: int, num_encoder: int = 0, num_decoder: int = 0
                 ) -> LayerSchedule:
        """Layer i runs block i once (no recurrence)."""
        return cls(tuple(VirtualLayer(i) for i in range(num_layers)), num_encoder, num_decoder)

    @property
    def depth(self) -> int:
        return len(self.layers)

    @property
    def virtual_to_physical(self) -> list[int]:
        return [layer.physical for layer in self.layers]

    @property
    def cycle(self) -> list[int]:
        return [layer.cycle for layer in self.layers]

    @property
    def num_skips(self) -> int:
        return min(self.num_encoder, self.num_decoder)

    @property
    def decoder_start(self) -> int:
        return self.depth - self.num_decoder

    def uses(self) -> dict[int, int]:
        """How many virtual layers run each physical block."""
        out: dict[int, int] = {}
        for layer in self.layers:
            out[layer.physical] = out.get(layer.physical, 0) + 1
        return out

    def shared_blocks(self) -> list[int]:
        """Physical blocks that run more than once (the recurrent core)."""
        return sorted(p for p, n in self.uses().items() if n > 1)
