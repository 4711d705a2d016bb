"""predict_scores / predict_labels / predict_views against hand-computed windows, flips and
scales: mmseg's recipe (logits averaged, small images unpadded) and the DANet authors'."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from attnblocks import inference
from attnblocks.inference import predict_labels, predict_scores
from attnblocks.models import DANetOutput
from tests.reference import relative_error

NUM_CLASSES = 5


def conv_model(kernel_size: int, seed: int = 0) -> nn.Conv2d:
    """A fixed random conv from 3 channels to class logits at the input's resolution."""
    torch.manual_seed(seed)
    conv = nn.Conv2d(3, NUM_CLASSES, kernel_size, padding=kernel_size // 2)
    with torch.no_grad():
        conv.weight.mul_(3)  # sharper logits, so errors in the averaging show
    return conv.eval()


def images(*shape: int, seed: int = 1) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def softmax_of(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x).softmax(dim=1)


def logits_of(model: nn.Module, x: Tensor) -> Tensor:
    with torch.no_grad():
        return model(x)


def windowed_reference(
    model: nn.Module, x: Tensor, crop: int, rows: list[int], cols: list[int], flip: bool = False,
    score=softmax_of,
) -> Tensor:  # fmt: skip
    """Average of ``score`` (softmax: the DANet recipe; logits: mmseg's) over the listed window
    offsets (and, for the DANet recipe's ``flip``, their mirror images)."""
    total = torch.zeros(x.shape[0], NUM_CLASSES, *x.shape[2:])
    count = torch.zeros(x.shape[2:])
    for top in rows:
        for left in cols:
            window = x[..., top : top + crop, left : left + crop]
            probs = score(model, window)
            if flip:
                probs = (probs + score(model, window.flip(-1)).flip(-1)) / 2
            total[..., top : top + crop, left : left + crop] += probs
            count[top : top + crop, left : left + crop] += 1
    assert (count > 0).all()
    return total / count


class GlobalContext(nn.Module):
    """A 3x3 conv plus a term from the input's mean: every pixel sees the whole window, as
    with global attention, so padding and window sizes change every label."""

    def __init__(self) -> None:
        super().__init__()
        self.local, self.context = conv_model(3), conv_model(1, seed=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.local(x) + 4 * self.context(x.mean(dim=(2, 3), keepdim=True))


class Spy(nn.Module):
    """Wraps a model and records every input it is called with."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.inputs: list[Tensor] = []
        self.inference_mode: list[bool] = []

    def forward(self, x: Tensor) -> Tensor:
        self.inputs.append(x.clone())
        self.inference_mode.append(torch.is_inference_mode_enabled())
        return self.model(x)


# ---- mmseg's recipe (the default): EncoderDecoder.slide_inference / whole_inference, TTA ----


def test_one_view_gives_the_logits():
    model, x = conv_model(3), images(2, 3, 13, 17)
    scores = predict_scores(model, x)
    assert scores.dtype == torch.float32 and scores.shape == (2, NUM_CLASSES, 13, 17)
    assert relative_error(scores, logits_of(model, x)) < 1e-7


def test_windows_average_logits_and_leave_small_images_unpadded():
    # mmseg sums window logits and divides by the count of windows per pixel; a 10 x 40 image
    # with 16 x 16 windows is decoded in 10 x 16 windows (one row, mmseg pads nothing)
    model, x = GlobalContext().eval(), images(1, 3, 10, 40)
    spy = Spy(model)
    scores = predict_scores(spy, x, crop_size=16, stride=10)
    assert [tuple(w.shape[-2:]) for w in spy.inputs] == [(10, 16)] * 4  # cols 0, 10, 20, 24
    expected = windowed_reference(model, x, 16, [0], [0, 10, 20, 24], score=logits_of)
    assert relative_error(scores, expected) < 1e-6
    # the DANet recipe averages probabilities of zero-padded 16 x 16 windows: other labels
    danet = predict_scores(model, x, crop_size=16, stride=10, recipe="danet")
    assert (danet.argmax(1) != scores.argmax(1)).any()


def test_an_image_smaller_than_the_window_is_one_unpadded_window():
    model, x = GlobalContext().eval(), images(2, 3, 10, 7)
    spy = Spy(model)
    scores = predict_scores(spy, x, crop_size=16)
    (window,) = spy.inputs
    assert torch.equal(window, x)  # no padding: the model sees the image alone
    assert relative_error(scores, logits_of(model, x)) < 1e-7


def test_mmseg_window_offsets_and_count_matrix():
    # 37 x 53, crop 16, stride 10: ceil((37 - 16) / 10) + 1 = 4 rows 0, 10, 20, 21 and
    # ceil((53 - 16) / 10) + 1 = 5 columns 0, 10, 20, 30, 37 (the last ones moved back)
    model, x = conv_model(3), images(1, 3, 37, 53)
    expected = windowed_reference(model, x, 16, [0, 10, 20, 21], [0, 10, 20, 30, 37],
                                  score=logits_of)  # fmt: skip
    assert relative_error(predict_scores(model, x, crop_size=16, stride=10), expected) < 1e-6
    assert relative_error(expected, logits_of(model, x)) > 1e-3  # tiling matters for a 3x3 conv


def test_flip_and_scales_average_the_softmax_of_the_views_logits():
    # SegTTAModel: each view (ratio, then mirrored) resized back as logits, softmax, mean
    model, x = conv_model(3), images(1, 3, 20, 30)
    resize = {"mode": "bilinear", "align_corners": False}
    expected = torch.zeros(1, NUM_CLASSES, 20, 30)
    for ratio in (0.5, 1.5):
        view = F.interpolate(x, size=inference.tta_size(20, 30, ratio), **resize)
        for mirrored in (False, True):
            logits = logits_of(model, view.flip(-1) if mirrored else view)
            logits = logits.flip(-1) if mirrored else logits
            expected += F.interpolate(logits, size=(20, 30), **resize).softmax(dim=1) / 4
    scores = predict_scores(model, x, scales=(0.5, 1.5), flip=True)
    assert relative_error(scores, expected) < 1e-6


def test_one_scaled_view_gives_its_logits_resized_back():
    model, x = conv_model(3), images(1, 3, 20, 30)
    model.align_corners = True  # taken from the model by default
    resize = {"mode": "bilinear", "align_corners": True}
    small = logits_of(model, F.interpolate(x, size=(15, 23), **resize))
    expected = F.interpolate(small, size=(20, 30), **resize)
    assert relative_error(predict_scores(model, x, scales=(0.75,)), expected) < 1e-6


def test_tta_sizes_round_twice_as_mmcv():
    # Resize(scale_factor=r, keep_ratio=True): (w, h) * r rounded, then a keep-ratio rescale
    assert inference.tta_size(15, 9, 0.5) == (8, 5) and inference.tta_size(15, 9, 1.3) == (20, 12)
    assert inference.tta_size(1024, 2048, 0.75) == (768, 1536)
    # 5 x 6 at 1.25: (6.25, 7.5) -> (6, 8) as bounds -> factor min(8 / 6, 6 / 5) = 1.2 -> (6, 7)
    assert inference.tta_size(5, 6, 1.25) == (6, 7)
    spy = Spy(conv_model(1))
    predict_scores(spy, images(1, 3, 15, 9), scales=(0.5, 1.3))
    assert [tuple(w.shape[-2:]) for w in spy.inputs] == [(8, 5), (20, 12)]


def test_predict_views_takes_prepared_views_in_order():
    model, x = conv_model(3), images(1, 3, 12, 14)
    views = [(x, False), (x.flip(-1), True)]
    expected = logits_of(model, x).softmax(1) + logits_of(model, x.flip(-1)).flip(-1).softmax(1)
    scores = inference.predict_views(model, iter(views), size=(12, 14))
    assert relative_error(scores, expected / 2) < 1e-6
    single = inference.predict_views(model, [(x, False)], size=(24, 28), align_corners=True)
    resized = F.interpolate(logits_of(model, x), size=(24, 28), mode="bilinear", align_corners=True)
    assert relative_error(single, resized) < 1e-6
    with pytest.raises(ValueError, match="at least one view"):
        inference.predict_views(model, [], size=(12, 14))


# ---- the DANet authors' recipe: probabilities averaged, small images zero-padded ----


def test_whole_image_is_the_softmax_of_the_logits():
    model, x = conv_model(3), images(2, 3, 13, 17)
    scores = predict_scores(model, x, recipe="danet")
    assert scores.shape == (2, NUM_CLASSES, 13, 17)
    assert scores.dtype == torch.float32
    assert relative_error(scores, softmax_of(model, x)) < 1e-6


@pytest.mark.parametrize("recipe", ["mmseg", "danet"])
@pytest.mark.parametrize(
    ("size", "crop", "stride"),
    [((37, 53), 16, 10), ((32, 32), (8, 12), (5, 12)), ((20, 24), 20, None), ((9, 11), 4, 1)],
)
def test_windows_of_a_pointwise_model_equal_the_whole_image(size, crop, stride, recipe):
    # a 1x1 conv sees the same pixels in any window, so any tiling gives the same scores
    model, x = conv_model(1), images(2, 3, *size)
    scores = predict_scores(model, x, crop_size=crop, stride=stride, recipe=recipe)
    assert scores.shape == (2, NUM_CLASSES, *size)
    whole = softmax_of(model, x) if recipe == "danet" else logits_of(model, x)
    assert relative_error(scores, whole) < 1e-6


def test_windows_are_placed_every_stride_and_at_the_edge():
    # 37 x 53, crop 16, stride 10: rows 0, 10, 20 and 21 = 37 - 16; cols 0, ..., 30 and 37
    model, x = conv_model(3), images(1, 3, 37, 53)
    expected = windowed_reference(model, x, 16, [0, 10, 20, 21], [0, 10, 20, 30, 37])
    scores = predict_scores(model, x, crop_size=16, stride=10, recipe="danet")
    assert relative_error(scores, expected) < 1e-6
    # the 3x3 conv's zero padding at window borders makes tiling matter
    assert relative_error(scores, softmax_of(model, x)) > 1e-3


def test_every_pixel_is_covered_by_crop_sized_windows():
    # encode each pixel's row and column in the image to read back where each window was
    rows, cols = torch.meshgrid(torch.arange(30.0), torch.arange(20.0), indexing="ij")
    x = torch.stack([rows, cols, torch.zeros_like(rows)])[None]
    for recipe in ("mmseg", "danet"):
        spy = Spy(conv_model(1))
        predict_scores(spy, x, crop_size=12, recipe=recipe)  # default stride 2/3 of 12 = 8
        starts = sorted((int(w[0, 0, 0, 0]), int(w[0, 1, 0, 0])) for w in spy.inputs)
        assert starts == [(top, left) for top in (0, 8, 16, 18) for left in (0, 8)]
        assert all(w.shape[-2:] == (12, 12) for w in spy.inputs)


def test_image_smaller_than_the_crop_is_zero_padded_at_the_bottom_right():
    model, x = conv_model(3), images(2, 3, 10, 7)
    spy = Spy(model)
    scores = predict_scores(spy, x, crop_size=16, recipe="danet")
    (window,) = spy.inputs
    assert window.shape == (2, 3, 16, 16)
    torch.testing.assert_close(window[..., :10, :7], x, rtol=0, atol=0)
    assert (window[..., 10:, :] == 0).all() and (window[..., :, 7:] == 0).all()
    # zeros below and right of the image are what the conv's own zero padding sees
    assert scores.shape == (2, NUM_CLASSES, 10, 7)
    assert relative_error(scores, softmax_of(model, x)) < 1e-6


def test_image_smaller_than_the_crop_along_one_axis_only():
    model, x = conv_model(1), images(1, 3, 10, 40)
    spy = Spy(model)
    scores = predict_scores(spy, x, crop_size=16, stride=10, recipe="danet")
    assert [w.shape[-2:] for w in spy.inputs] == [(16, 16)] * 4  # cols 0, 10, 20, 24
    assert relative_error(scores, softmax_of(model, x)) < 1e-6


def test_flip_averages_the_mirrored_prediction():
    model, x = conv_model(3), images(2, 3, 12, 15)
    mirrored = softmax_of(model, x.flip(-1)).flip(-1)
    expected = (softmax_of(model, x) + mirrored) / 2
    scores = predict_scores(model, x, flip=True, recipe="danet")
    assert relative_error(scores, expected) < 1e-6
    assert relative_error(scores, predict_scores(model, x, recipe="danet")) > 1e-3


def test_flip_with_windows_mirrors_each_window():
    model, x = conv_model(3), images(1, 3, 21, 26)
    expected = windowed_reference(model, x, 12, [0, 8, 9], [0, 8, 14], flip=True)
    scores = predict_scores(model, x, crop_size=12, stride=8, flip=True, recipe="danet")
    assert relative_error(scores, expected) < 1e-6


@pytest.mark.parametrize("align_corners", [False, True])
def test_scales_average_probabilities_resized_back(align_corners):
    model, x = conv_model(3), images(2, 3, 20, 30)
    resize = {"mode": "bilinear", "align_corners": align_corners}
    expected = torch.zeros(2, NUM_CLASSES, 20, 30)
    for size in [(10, 15), (20, 30), (30, 45)]:  # scales 0.5, 1 and 1.5
        probs = softmax_of(model, F.interpolate(x, size=size, **resize))
        expected += F.interpolate(probs, size=(20, 30), **resize) / 3
    scores = predict_scores(model, x, scales=(0.5, 1.0, 1.5), align_corners=align_corners,
                            recipe="danet")  # fmt: skip
    assert relative_error(scores, expected) < 1e-6


@pytest.mark.parametrize("model_align_corners", [False, True])
def test_resizing_follows_the_model_align_corners_by_default(model_align_corners):
    # DANet.from_original builds align_corners=True models, as the authors evaluated them.
    model, x = conv_model(3), images(1, 3, 20, 30)
    model.align_corners = model_align_corners
    resize = {"mode": "bilinear", "align_corners": model_align_corners}
    small = softmax_of(model, F.interpolate(x, size=(15, 23), **resize))
    expected = F.interpolate(small, size=(20, 30), **resize)
    danet = {"recipe": "danet"}
    assert relative_error(predict_scores(model, x, scales=(0.75,), **danet), expected) < 1e-6
    labels = predict_labels(model, x, scales=(0.75,), **danet)
    assert torch.equal(labels, expected.argmax(dim=1))
    # an explicit argument still wins over the model's attribute
    other = predict_scores(model, x, scales=(0.75,), align_corners=not model_align_corners,
                           **danet)  # fmt: skip
    assert relative_error(other, expected) > 1e-3


def test_scales_with_windows_and_padding():
    # at scale 0.5 the 20 x 30 image is 10 x 15, smaller than the 16 crop
    model, x = conv_model(1), images(1, 3, 20, 30)
    small = softmax_of(model, F.interpolate(x, size=(10, 15), mode="bilinear"))
    expected = (F.interpolate(small, size=(20, 30), mode="bilinear") + softmax_of(model, x)) / 2
    scores = predict_scores(model, x, crop_size=16, stride=8, scales=(0.5, 1.0), flip=True,
                            recipe="danet")  # fmt: skip
    assert relative_error(scores, expected) < 1e-6


def test_scale_sizes_are_rounded_to_the_nearest_pixel():
    spy = Spy(conv_model(1))
    predict_scores(spy, images(1, 3, 15, 9), scales=(0.5, 1.3), recipe="danet")
    assert [w.shape[-2:] for w in spy.inputs] == [(8, 5), (20, 12)]  # 7.5 -> 8, 19.5 -> 20


# ---- both recipes ----


@pytest.mark.parametrize("recipe", ["mmseg", "danet"])
@pytest.mark.parametrize("wrap", [tuple, DANetOutput])
def test_first_element_of_a_tuple_output_is_the_logits(wrap, recipe):
    conv = conv_model(3)

    class TupleModel(nn.Module):
        def forward(self, x: Tensor):
            aux = torch.full((x.shape[0], 2, 1, 1), 100.0)  # other shape: must be ignored
            return wrap([conv(x), aux, aux]) if wrap is tuple else wrap(conv(x), aux, aux)

    x = images(2, 3, 19, 23)
    kwargs = {"crop_size": 10, "stride": 7, "scales": (0.75, 1.0), "flip": True, "recipe": recipe}
    scores = predict_scores(TupleModel(), x, **kwargs)
    assert relative_error(scores, predict_scores(conv, x, **kwargs)) < 1e-7


@pytest.mark.parametrize("recipe", ["mmseg", "danet"])
def test_probabilities_sum_to_one_and_labels_are_their_argmax(recipe):
    model, x = conv_model(3), images(3, 3, 25, 18)
    kwargs = {"crop_size": (12, 10), "stride": (7, 6), "scales": (0.6, 1.0, 1.4), "flip": True,
              "recipe": recipe}  # fmt: skip
    scores = predict_scores(model, x, **kwargs)  # several views: probabilities in both
    torch.testing.assert_close(scores.sum(dim=1), torch.ones(3, 25, 18))
    assert (scores >= 0).all()
    labels = predict_labels(model, x, **kwargs)
    assert labels.shape == (3, 25, 18) and labels.dtype == torch.int64
    assert torch.equal(labels, scores.argmax(dim=1))
    assert labels.unique().numel() > 1  # a constant label map would prove little


def test_output_is_float32_for_double_models():
    model, x = conv_model(3).double(), images(1, 3, 8, 9).double()
    scores = predict_scores(model, x, crop_size=6, stride=4)
    assert scores.dtype == torch.float32
    assert predict_labels(model, x).dtype == torch.int64


@pytest.mark.parametrize("recipe", ["mmseg", "danet"])
@pytest.mark.parametrize("training", [False, True])
def test_runs_in_inference_mode_and_leaves_the_model_mode(training, recipe):
    spy = Spy(conv_model(3)).train(training)
    scores = predict_scores(spy, images(1, 3, 8, 8), crop_size=5, flip=True, recipe=recipe)
    assert spy.inference_mode and all(spy.inference_mode)
    assert not scores.requires_grad
    assert spy.training is training and spy.model.training is training


@pytest.mark.parametrize(
    ("x", "kwargs", "match"),
    [
        (torch.zeros(3, 8, 8), {}, r"4D tensor .*got a 3D tensor of shape \(3, 8, 8\)"),
        (torch.zeros(1, 3, 8, 8, dtype=torch.long), {}, "floating-point, got dtype torch.int64"),
        (torch.zeros(1, 3, 0, 8), {}, r"non-empty, got shape \(1, 3, 0, 8\)"),
        (None, {"crop_size": 0}, "crop_size must be a positive int .*got 0"),
        (None, {"crop_size": (8, -1)}, r"crop_size must be .*got \(8, -1\)"),
        (None, {"crop_size": (8, 8, 8)}, "crop_size must be"),
        (None, {"crop_size": 8, "stride": 0}, "stride must be a positive int .*got 0"),
        (None, {"crop_size": 8, "stride": 9}, r"stride must not exceed crop_size.*\(9, 9\)"),
        (None, {"crop_size": 8, "stride": (4, 9)}, "stride must not exceed crop_size"),
        (None, {"stride": 4}, "stride is only used with sliding windows"),
        (None, {"scales": ()}, r"scales must be a non-empty sequence .*got \(\)"),
        (None, {"scales": (1.0, 0.0)}, "scales must be a non-empty sequence of positive"),
        (None, {"scales": (-1.0,)}, "scales must be"),
        (None, {"scales": (float("nan"),)}, "scales must be"),
        (None, {"scales": 1.0}, "scales must be a non-empty sequence .*got 1.0"),
        (None, {"recipe": "paper"}, "recipe must be 'mmseg' or 'danet', got 'paper'"),
    ],
)
def test_bad_arguments_raise(x, kwargs, match):
    x = images(1, 3, 8, 8) if x is None else x
    for predict in (predict_scores, predict_labels):
        with pytest.raises(ValueError, match=match):
            predict(conv_model(1), x, **kwargs)


def test_non_tensor_images_raise_type_error():
    with pytest.raises(TypeError, match=r"images must be a torch\.Tensor, got list"):
        predict_scores(conv_model(1), [[0.0]])


@pytest.mark.parametrize(
    ("model", "kwargs", "match"),
    [
        # downsampling model: logits at half resolution, whole image and in windows
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), {}, r"\(1, K, 9, 10\).*\(1, 4, 5, 5\)"),
        (nn.Conv2d(3, 4, 3, stride=2, padding=1), {"crop_size": 6}, r"\(1, K, 6, 6\)"),
        (nn.Flatten(2), {}, r"got a 3D tensor of shape \(1, 3, 90\)"),
        (lambda x: ("logits", x), {}, "tensor or a tuple .*got str"),
    ],
)
def test_bad_model_outputs_raise(model, kwargs, match):
    with pytest.raises(ValueError, match=match):
        predict_scores(model, images(1, 3, 9, 10), **kwargs)
