"""ANNNet, ISANet and EMANet from mmseg checkpoints: the fixtures reproduced through each
class's from_mmseg (file with meta) and attnblocks.models.from_mmseg (bare state dict),
strict loading, widths and classes inferred, EMANet's training step equal to mmseg's.

One R-50 model per fixture and entry point (module-scoped), the strictness and class-count
checks one more each.
"""

import copy

import pytest
import torch
import torch.nn.functional as F

from attnblocks.models import ANNNet, EMANet, ISANet, from_mmseg
from tests.compat.mmseg_reference import (
    META,
    fixture_arrays,
    fixture_checkpoint,
    fixture_state_dict,
)
from tests.layers.mmseg_attention_reference import conv_module, ema_module
from tests.models.mmseg_checks import (
    assert_loads_depth_and_classes,
    assert_reproduces_fixture,
)
from tests.reference import relative_error

# name -> (class, fixture, the settings the weights show (attribute path, value))
CASES = {
    "ann": (ANNNet, "mmseg_ann", {"head.fusion.key_channels": 256, "head.context.channels": 512,
                                  "head.context.key_channels": 256}),
    "isanet": (ISANet, "mmseg_isanet", {"head.attention.key_channels": 256,
                                        "head.attention.channels": 512,
                                        "head.attention.down_factor": (8, 8)}),
    "emanet": (EMANet, "mmseg_emanet", {"head.attention.num_bases": 64,
                                        "head.attention.channels": 512,
                                        "head.attention.num_stages": 3}),
}  # fmt: skip
NAMES = sorted(CASES)


def head_output(head):
    return [(head, "head.out")]


def attribute(model, path):
    for name in path.split("."):
        model = getattr(model, name)
    return model


@pytest.fixture(scope="module")
def from_file(tmp_path_factory):
    """``load(name)``: the model ``Class.from_mmseg`` gives for the fixture saved as a
    ``{"meta", "state_dict"}`` file, built once per module."""
    models = {}

    def load(name):
        if name not in models:
            cls, fixture, _ = CASES[name]
            path = tmp_path_factory.mktemp(name) / f"{fixture}.pth"
            torch.save(fixture_checkpoint(fixture), path)  # auxiliary_head.* included
            models[name] = cls.from_mmseg(path)
        return models[name]

    return load


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_mmseg_from_a_file(from_file, name):
    model = from_file(name)
    cls, fixture, settings = CASES[name]
    assert type(model) is cls and not model.training
    assert model.backbone_name == "resnet50c" and model.num_classes == 19
    assert model.output_stride == 8 and not model.align_corners
    assert model.pretrained_config.dataset == "cityscapes"
    for path, value in settings.items():
        assert attribute(model, path) == value, path
    assert_reproduces_fixture(model, fixture, head_output)


@pytest.mark.parametrize("name", NAMES)
def test_reproduces_mmseg_through_models_from_mmseg_from_a_bare_state_dict(name):
    cls, fixture, _ = CASES[name]
    model = from_mmseg(fixture_state_dict(fixture))  # the class read from the keys
    assert type(model) is cls
    assert_reproduces_fixture(model, fixture, head_output)


def test_ann_reads_layer3_and_layer4(from_file):
    model = from_file("ann")
    assert model.backbone.feature_info.out_indices == (3, 4)
    assert model.head.in_channels == (1024, 2048)


# name -> (a key to remove, its name here; a key to reshape, its name here; a renamable stray)
STRICT = {
    "ann": ("decode_head.context.stages.0.value_project.bias",
            "head.context.stages.0.value_project.bias",
            "decode_head.fusion.stages.0.key_project.conv.weight",
            "head.fusion.stages.0.key_project.conv.weight",
            "decode_head.fusion.stages.0.out_project.extra"),
    "isanet": ("decode_head.local_relation.output_project.bn.running_var",
               "head.attention.local_relation.output_project.norm.running_var",
               "decode_head.global_relation.query_project.1.conv.weight",
               "head.attention.global_relation.query_project.1.conv.weight",
               "decode_head.global_relation.value_project.extra"),
    "emanet": ("decode_head.ema_mid_conv.conv.bias", "head.attention.in_conv.bias",
               "decode_head.ema_out_conv.conv.weight", "head.attention.out_conv.conv.weight",
               "decode_head.ema_module.bases_extra"),
}  # fmt: skip


@pytest.mark.parametrize("name", NAMES)
def test_strict_loading_names_a_removed_a_reshaped_and_an_extra_key(name):
    cls, fixture, _ = CASES[name]
    removed, removed_here, reshaped, reshaped_here, stray = STRICT[name]
    state = fixture_state_dict(fixture)
    state["decode_head.convs.9.conv.weight"] = torch.zeros(1)  # no rule covers it
    with pytest.raises(ValueError, match=rf"not part of mmsegmentation's {cls.__name__}.*"
                                         r"\['decode_head\.convs\.9\.conv\.weight'\]"):  # fmt: skip
        cls.from_mmseg({"meta": {}, "state_dict": state})
    state = fixture_state_dict(fixture)
    del state[removed]
    shape = tuple(state[reshaped].shape)
    state[reshaped] = torch.zeros(shape[0], shape[1] + 1, *shape[2:])
    state[stray] = torch.zeros(1)
    with pytest.raises(ValueError) as error:
        cls.from_mmseg({"meta": {}, "state_dict": state})
    message = str(error.value)
    assert f"missing keys (1): ['{removed_here}']" in message
    assert f"{reshaped_here}: checkpoint ({shape[0]}, {shape[1] + 1}" in message
    assert "unexpected keys (1): ['head." in message and stray.split(".")[-1] in message


def test_ann_checks_both_copies_of_apnbs_shared_key_query_projection():
    # mmseg lists APNB's shared projection twice; the key_project copy is not loaded (mmseg's
    # loading applies the query_project one last) but must be there like any other key.
    state = fixture_state_dict("mmseg_ann")
    del state["decode_head.context.stages.0.key_project.bn.running_mean"]
    missing = r"\['decode_head\.context\.stages\.0\.key_project\.bn\.running_mean'\]"
    with pytest.raises(ValueError, match=f"missing or misshapen: {missing}"):
        ANNNet.from_mmseg(state)


@pytest.mark.parametrize("name", NAMES)
def test_another_class_count_loads(name):
    cls, fixture, _ = CASES[name]
    assert_loads_depth_and_classes(cls, fixture, 6, "resnet50c", 7,
                                   classifier="head.classifier.conv.weight")  # fmt: skip


def test_meta_config_settings_reach_the_model():
    # A checkpoint's config sets what the weights do not show.
    config = ("model = dict(type='EncoderDecoder', decode_head=dict(type='ISAHead', "
              "isa_channels=256, down_factor=(4, 4)))")  # fmt: skip
    options = ISANet.mmseg_model_options(fixture_state_dict("mmseg_isanet"), {"config": config},
                                         None)  # fmt: skip
    assert options["down_factor"] == (4, 4) and options["key_channels"] == 256
    config = "model = dict(decode_head=dict(type='EMAHead', num_stages=2, momentum=0.2))"
    options = EMANet.mmseg_model_options(fixture_state_dict("mmseg_emanet"), {"config": config},
                                         None)  # fmt: skip
    assert (options["num_stages"], options["momentum"]) == (2, 0.2)
    assert (options["ema_channels"], options["num_bases"], options["channels"]) == (512, 64, 256)
    config = "model = dict(decode_head=dict(type='ANNHead', key_pool_scales=(1, 2)))"
    options = ANNNet.mmseg_model_options(fixture_state_dict("mmseg_ann"), {"config": config}, None)
    assert options["key_pool_scales"] == (1, 2) and options["query_scales"] == (1,)
    # the test META's config is a sketch, not Python: settings fall back to the defaults
    assert "down_factor" not in ISANet.mmseg_model_options(
        fixture_state_dict("mmseg_isanet"), META, None
    )


def test_emanet_training_step_moves_the_bases_as_mmseg(from_file):
    head = copy.deepcopy(from_file("emanet").head).train()
    arrays = fixture_arrays("mmseg_emanet")
    x = torch.cat([arrays["feat.3"], arrays["feat.3"].flip(-1)])  # a batch of two
    initial = head.attention.bases.clone()
    head(x)
    # mmseg's EMAHead in training mode, in float64 from the fixture's weights: ema_in_conv
    # (batch statistics), ema_mid_conv, EMAModule's EM and its update of the bases buffer.
    state = {k.removeprefix("decode_head."): v.double()
             for k, v in fixture_state_dict("mmseg_emanet").items()}  # fmt: skip
    assert torch.equal(initial.double(), state["ema_module.bases"])  # the fixture's bases
    feats = conv_module(state, "ema_in_conv", x.double(), training=True, padding=1)
    feats = F.conv2d(feats, state["ema_mid_conv.conv.weight"], state["ema_mid_conv.conv.bias"])
    _, expected = ema_module(feats, state["ema_module.bases"], 3, 0.1, training=True)
    assert relative_error(head.attention.bases, expected) < 1e-5
    assert relative_error(head.attention.bases, initial) > 1e-3  # it moved
