"""benchmarks/sensitivity.py groups tensors by their role in a block: the same role in every
block is one group, across the families' naming schemes."""

from benchmarks.sensitivity import role


def test_roles_drop_the_block_and_keras_numbering():
    assert role("block3b_se_excite/activations") == role("block6d_se_excite/activations") == "se_excite/activations"
    assert role("block_3_expand/weights") == "expand/weights"            # MobileNetV2
    assert role("conv3_block2_1_conv/weights") == "1_conv/weights"       # ResNet50
    assert role("conv2d_16/weights") == role("conv2d/weights") == "conv2d/weights"
    assert role("stem_conv/weights") == "stem_conv/weights"
    assert role("block1a_dwconv/activations") != role("block1a_dwconv/weights")
