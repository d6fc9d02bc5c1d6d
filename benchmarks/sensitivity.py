"""Which tensors of a trained ``keras.applications`` family break at a low bitlength.

The family is trained in float (the 4-bit column's schedule, ``applications.py``), bit-pruned
with every tensor at 16 bits and its activation ranges calibrated on the training data (the
``fit`` steps at learning rate 0); then each group of tensors (the same role in every block,
e.g. EfficientNet's ``se_excite/activations``) alone goes to ``--bits`` and the Keras model is
scored on the test set. What ``allocate_bitlengths`` measures per tensor, by role.

    python benchmarks/sensitivity.py --family=EfficientNetB0 --steps=712 --finetune_steps=178
"""

from __future__ import annotations

import collections
import os
import re
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags() -> None:
    # Here, not at import: tests import role() beside modules with flags of the same names.
    from benchmarks import applications  # noqa: F401  (its flags: --steps, --finetune_steps, ...)

    flags.DEFINE_string("family", "EfficientNetB0", "The keras.applications family.")
    flags.DEFINE_integer("bits", 4, "The bitlength each group goes to, alone.")


def role(name: str) -> str:
    """``block3b_se_excite/activations`` -> ``se_excite/activations``: the block dropped
    (EfficientNet's ``block3b_``, MobileNetV2's ``block_3_``, ResNet's ``conv3_block2_``), and
    Keras' numbering (``conv2d_16`` -> ``conv2d``)."""
    layer, kind = name.rsplit("/", 1)
    match = re.match(r"(?:block_?\d+[a-z]?|conv\d+_block\d+)_(.*)", layer)
    short = re.sub(r"_\d+$", "", match.group(1) if match else layer)
    return f"{short}/{kind}"


def main(argv):
    del argv
    import numpy as np
    import tf_bitpruning as tfbp
    from benchmarks import applications as apps
    from benchmarks.common import accuracy
    from tf_bitpruning import costs

    model, (xtr, ytr, xte, yte), (_, finetune_steps, _) = apps.trained_float(FLAGS.family)
    print(f"float {accuracy(model, xte, yte):.4f}", flush=True)
    bp = tfbp.bitprune_model(model, regularization=0.0, weight_bits=(2, 16), activation_bits=(1, 16),
                             init_bits=16, activation_range="ema")
    apps.fit_steps(bp, 0.0, finetune_steps, xtr, ytr)  # calibrates the ranges; no weight moves
    tensors = costs.quantized_tensors(bp)

    def score(lowered, bits=FLAGS.bits):
        for t in tensors:
            n = bits if t in lowered else 16
            t.bits_variable.assign(np.full(t.bits_variable.shape, n / t.quantizer.bits_lr_multiplier, np.float32))
        return accuracy(bp, xte, yte)

    print(f"every tensor at 16 bits {score([]):.4f}")
    for what, chosen in (("every tensor", tensors), ("kernels", [t for t in tensors if t.kind == "weights"]),
                         ("activations", [t for t in tensors if t.kind == "activations"])):
        print(f"{what} at {FLAGS.bits} bits {score(chosen):.4f}", flush=True)
    groups = collections.OrderedDict()
    for t in tensors:
        groups.setdefault(role(t.name), []).append(t)
    print(f"\n| tensors at {FLAGS.bits} bits (the rest at 16) | how many | test top-1 |\n|---|---|---|")
    for name, group in groups.items():
        print(f"| {name} | {len(group)} | {100 * score(group):.1f} |", flush=True)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
