"""Each inner RPC's converter pair (services/common/convert.py) round-trips what it is given,
and its strategy sets every field of every message under the RPC's request and response.

The second part is what makes the first worth having: the field set is read from the message
descriptors (nested messages and map values included), so a field added to a proto fails here
until the strategy draws it, and with it the converters that must carry it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

import numpy as np
import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from services.api.imaging.v1 import (
    decoder_pb2,
    findings_pb2,
    gateway_pb2,
    postprocessor_pb2,
    preprocessor_pb2,
)
from services.common import convert
from services.common.errors import InvalidInput
from services.common.grids import Segmentation, VolumeGrid
from services.common.images import (
    DecodedImage,
    Geometry,
    ImageAttributes,
    Lut,
    Preprocessed,
    SharedImage,
    SharedPixels,
)
from services.common.jobs import DecodeJob, PostprocessJob, PreprocessJob
from services.common.results import (
    Assessment,
    Caveat,
    CaveatReason,
    CodedConcept,
    Finding,
    FindingStatus,
    Measurement,
    RequestPriority,
    TriagePriority,
)

# --- strategies: every field of every domain object, within what the wire can carry ----------

texts = st.text(max_size=8)
floats = st.floats(allow_nan=False, width=64)
int32s = st.integers(-(2**31), 2**31 - 1)
DTYPES = [np.dtype(code) for code in ("<u1", "<i1", "<u2", "<i2", "<u4", "<i4", "<f4", "<f8")]
dtypes = st.sampled_from(DTYPES)


def arrays(min_dims: int = 1, max_dims: int = 3, min_side: int = 0) -> st.SearchStrategy[Any]:
    """Arrays of every dtype a Tensor carries (NaNs and all: compared byte for byte).

    At least 1-D: tensors.to_proto sends a 0-D array as shape (1,) (np.ascontiguousarray), and
    no model input or output is 0-D.
    """
    shapes = hnp.array_shapes(min_dims=min_dims, max_dims=max_dims, min_side=min_side, max_side=3)
    return dtypes.flatmap(lambda dtype: hnp.arrays(dtype, shapes))


luts = st.builds(Lut, int32s, int32s, arrays(1, 1), texts)
attributes = st.builds(
    ImageAttributes,
    sop_instance_uid=texts,
    sop_class_uid=texts,
    study_instance_uid=texts,
    series_instance_uid=texts,
    modality=texts,
    body_part_examined=texts,
    view_position=texts,
    transfer_syntax_uid=texts,
    photometric_interpretation=texts,
    bits_stored=int32s,
    pixel_representation=int32s,
    rescale_slope=floats,
    rescale_intercept=floats,
    window_center=st.none() | floats,
    window_width=st.none() | floats,
    pixel_spacing=st.none() | st.tuples(floats, floats),
    number_of_frames=int32s,
    frame_positions=st.lists(st.tuples(floats, floats, floats), max_size=3).map(tuple),
    # An empty orientation is "unknown" on the wire: None.
    image_orientation_patient=st.none() | st.lists(floats, min_size=1, max_size=6).map(tuple),
    slice_thickness=st.none() | floats,
    modality_lut=st.none() | luts,
    voi_luts=st.lists(luts, max_size=2).map(tuple),
    # An empty function is the default on the wire: LINEAR.
    voi_lut_function=st.text(min_size=1, max_size=8),
    instance_number=int32s,
    series_number=int32s,
    invalid=st.lists(texts, max_size=3).map(tuple),
    patient_age_years=st.none() | floats,
    presentation_intent_type=texts,
)
shared_pixels = st.builds(
    SharedPixels, texts, dtypes, st.lists(st.integers(0, 2**40), max_size=4).map(tuple)
)
decoded = st.one_of(
    st.builds(DecodedImage, arrays(4, 4, min_side=1), attributes),
    st.builds(SharedImage, shared_pixels, attributes),
)
geometries = st.builds(Geometry, int32s, int32s, int32s, int32s, int32s, int32s)
grids = st.builds(
    VolumeGrid,
    texts,
    st.tuples(int32s, int32s, int32s),
    st.tuples(floats, floats, floats),
    hnp.arrays(np.float64, (4, 4), elements=floats),
)
caveats = st.builds(Caveat, st.sampled_from(CaveatReason), texts, texts)
concepts = st.builds(
    CodedConcept,
    code=st.text(min_size=1, max_size=64),
    coding_scheme=st.text(min_size=1, max_size=16),
    display_name=st.text(min_size=1, max_size=64),
)


@st.composite
def findings(draw: st.DrawFn) -> Finding:
    """A finding is INDETERMINATE (and not positive) exactly when it has caveats."""
    doubts = tuple(draw(st.lists(caveats, max_size=2)))
    positive = False if doubts else draw(st.booleans())
    return Finding(
        concept=draw(concepts),
        probability=draw(floats),
        threshold=draw(floats),
        positive=positive,
        sop_instance_uid=draw(texts),
        heatmap_png=draw(st.binary(max_size=8)),
        status=FindingStatus.INDETERMINATE if doubts else None,
        caveats=doubts,
        ood_score=draw(floats),
        ood_threshold=draw(floats),
    )


decode_jobs = st.builds(DecodeJob, st.binary(max_size=8), st.booleans(), st.none() | shared_pixels)
preprocess_jobs = st.builds(PreprocessJob, texts, st.lists(decoded, max_size=3).map(tuple))
preprocessed = st.builds(
    Preprocessed,
    arrays(),
    st.lists(geometries, max_size=3),
    st.none() | grids,
    st.lists(texts, max_size=3),
)
postprocess_jobs = st.builds(
    PostprocessJob,
    pipeline=texts,
    outputs=st.dictionaries(texts, arrays(), max_size=3),
    sop_instance_uids=st.lists(texts, max_size=3).map(tuple),
    geometries=st.lists(geometries, max_size=3).map(tuple),
    grid=st.none() | grids,
    heatmaps=st.booleans(),
    masks=st.booleans(),
    caveats=st.lists(caveats, max_size=3).map(tuple),
)
assessments = st.builds(
    Assessment,
    st.lists(findings(), max_size=3),
    st.sampled_from(TriagePriority),
    st.lists(st.builds(Measurement, concepts, floats, texts, texts), max_size=2),
    st.lists(st.builds(Segmentation, texts, grids, arrays()), max_size=2),
    st.lists(caveats, max_size=2),
)


@dataclass(frozen=True)
class Pair:
    """One message's converters, and a strategy for the domain object they convert."""

    message: type[Message]
    strategy: st.SearchStrategy[Any]
    to_proto: Callable[[Any], Message]
    from_proto: Callable[[Any], Any]


PAIRS = [
    Pair(
        decoder_pb2.DecodeRequest,
        decode_jobs,
        convert.decode_request_to_proto,
        convert.decode_request_from_proto,
    ),
    Pair(
        decoder_pb2.DecodeResponse,
        decoded,
        convert.decode_response_to_proto,
        convert.decode_response_from_proto,
    ),
    Pair(
        preprocessor_pb2.PreprocessRequest,
        preprocess_jobs,
        convert.preprocess_request_to_proto,
        convert.preprocess_request_from_proto,
    ),
    Pair(
        preprocessor_pb2.PreprocessResponse,
        preprocessed,
        convert.preprocess_response_to_proto,
        convert.preprocess_response_from_proto,
    ),
    Pair(
        postprocessor_pb2.PostprocessRequest,
        postprocess_jobs,
        convert.postprocess_request_to_proto,
        convert.postprocess_request_from_proto,
    ),
    Pair(
        postprocessor_pb2.PostprocessResponse,
        assessments,
        convert.postprocess_response_to_proto,
        convert.postprocess_response_from_proto,
    ),
]
IDS = [pair.message.DESCRIPTOR.name for pair in PAIRS]


# --- comparing domain objects, and the fields a message sets ----------------------------------


def assert_same(sent: Any, back: Any, path: str = "") -> None:
    """Equal field for field and of the same types; arrays by dtype, shape and bytes."""
    where = path or "the object"
    if isinstance(sent, np.ndarray):
        assert isinstance(back, np.ndarray), f"{where}: {type(back).__name__}, not an array"
        assert (back.dtype, back.shape) == (sent.dtype, sent.shape), where
        assert back.tobytes() == sent.tobytes(), f"{where}: the values differ"
        return
    assert type(back) is type(sent), f"{where}: {type(back).__name__}, not {type(sent).__name__}"
    if dataclasses.is_dataclass(sent):
        for field in dataclasses.fields(sent):
            assert_same(
                getattr(sent, field.name), getattr(back, field.name), f"{path}.{field.name}"
            )
    elif isinstance(sent, (list, tuple)):
        assert len(back) == len(sent), f"{where}: {len(back)} items, not {len(sent)}"
        for i, (a, b) in enumerate(zip(sent, back, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    elif isinstance(sent, Mapping):
        # A proto map keeps no order.
        assert sorted(back) == sorted(sent), f"{where}: keys {sorted(back)}, not {sorted(sent)}"
        for key in sent:
            assert_same(sent[key], back[key], f"{path}[{key!r}]")
    else:
        assert back == sent, f"{where}: {back!r}, not {sent!r}"


def _nested(field: FieldDescriptor) -> Descriptor | None:
    """The message type a field holds (a map's value type for a map), or None for scalars."""
    message: Descriptor | None = field.message_type
    if message is not None and message.GetOptions().map_entry:
        value: Descriptor | None = message.fields_by_name["value"].message_type
        return value
    return message


def declared_fields(
    descriptor: Descriptor, prefix: str = "", within: frozenset[str] = frozenset()
) -> set[str]:
    """Every field path of a message type, into nested messages (a type that contains itself
    is entered once per path)."""
    paths: set[str] = set()
    within = within | {descriptor.full_name}
    for field in descriptor.fields:
        path = prefix + field.name
        paths.add(path)
        nested = _nested(field)
        if nested is not None and nested.full_name not in within:
            paths |= declared_fields(nested, f"{path}.", within)
    return paths


def set_fields(message: Message, prefix: str = "") -> set[str]:
    """The field paths a message sets (non-default values, present optionals)."""
    paths: set[str] = set()
    for field, value in message.ListFields():
        path = prefix + field.name
        paths.add(path)
        if _nested(field) is None:
            continue
        if field.message_type.GetOptions().map_entry:
            items = list(value.values())
        elif field.label == FieldDescriptor.LABEL_REPEATED:
            items = list(value)
        else:
            items = [value]
        for item in items:
            paths |= set_fields(item, f"{path}.")
    return paths


def unset_fields(pair: Pair, strategy: st.SearchStrategy[Any] | None = None) -> set[str]:
    """The fields of the pair's message that no drawn object sets (derandomised: stable)."""
    seen: set[str] = set()

    @settings(
        max_examples=150,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    @given(strategy if strategy is not None else pair.strategy)
    def draw(value: Any) -> None:
        seen.update(set_fields(pair.to_proto(value)))

    draw()
    return declared_fields(pair.message.DESCRIPTOR) - seen


# --- the tests ---------------------------------------------------------------------------------


def test_every_inner_rpc_has_a_converter_pair_for_its_request_and_response() -> None:
    messages = {
        name
        for module, service in (
            (decoder_pb2, "DicomDecoder"),
            (preprocessor_pb2, "Preprocessor"),
            (postprocessor_pb2, "Postprocessor"),
        )
        for method in module.DESCRIPTOR.services_by_name[service].methods
        for name in (method.input_type.full_name, method.output_type.full_name)
    }
    assert messages == {pair.message.DESCRIPTOR.full_name for pair in PAIRS}


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_a_message_survives_the_wire(pair: Pair, data: st.DataObject) -> None:
    sent = data.draw(pair.strategy)
    wire = pair.message.FromString(pair.to_proto(sent).SerializeToString())
    assert_same(sent, pair.from_proto(wire))


@pytest.mark.parametrize("pair", PAIRS, ids=IDS)
def test_the_strategy_sets_every_field_of_the_message(pair: Pair) -> None:
    assert unset_fields(pair) == set(), "add these fields to the strategy (and the converters)"


def test_a_field_the_strategy_leaves_unset_is_found() -> None:
    (pair,) = [p for p in PAIRS if p.message is postprocessor_pb2.PostprocessRequest]
    never_masks = postprocess_jobs.map(lambda job: dataclasses.replace(job, masks=False))
    assert unset_fields(pair, never_masks) == {"masks"}


def test_the_field_paths_reach_nested_messages_and_map_values() -> None:
    paths = declared_fields(postprocessor_pb2.PostprocessRequest.DESCRIPTOR)
    assert {"outputs.data", "volume.affine", "caveats.reason"} <= paths
    image = declared_fields(decoder_pb2.DecodeResponse.DESCRIPTOR)
    assert {"image.attributes.modality_lut.data.shape", "image.shared_pixels.dtype"} <= image


# --- enums: one explicit table each, covering both sides --------------------------------------


def _proto_values(enum: Any) -> set[int]:
    return {
        value.number for value in enum.DESCRIPTOR.values if not value.name.endswith("_UNSPECIFIED")
    }


@pytest.mark.parametrize(
    ("table", "domain", "proto"),
    [
        (convert.TRIAGE_PRIORITIES, TriagePriority, findings_pb2.TriagePriority),
        (convert.FINDING_STATUSES, FindingStatus, findings_pb2.FindingStatus),
        (convert.CAVEAT_REASONS, CaveatReason, findings_pb2.CaveatReason),
    ],
    ids=["TriagePriority", "FindingStatus", "CaveatReason"],
)
def test_an_enum_table_maps_every_member_to_its_own_proto_value(
    table: Mapping[Enum, int], domain: type[Enum], proto: Any
) -> None:
    assert set(table) == set(domain)
    assert sorted(table.values()) == sorted(_proto_values(proto))
    for member, number in table.items():
        assert proto.Name(number).endswith(f"_{member.name}")


def test_the_request_priority_table_maps_every_proto_value_to_its_own_member() -> None:
    table = convert.REQUEST_PRIORITIES
    assert set(table) == {v.number for v in gateway_pb2.RequestPriority.DESCRIPTOR.values}
    assert sorted(table.values()) == sorted(RequestPriority)
    assert table[gateway_pb2.REQUEST_PRIORITY_UNSPECIFIED] is RequestPriority.DEFAULT


def test_unknown_and_unspecified_enum_values_are_invalid_input() -> None:
    with pytest.raises(InvalidInput, match="triage priority is unspecified"):
        convert.triage_from_proto(findings_pb2.TRIAGE_PRIORITY_UNSPECIFIED)
    with pytest.raises(InvalidInput, match="reason is unspecified"):
        convert.caveat_from_proto(findings_pb2.Caveat())
    unknown: Any = 99
    for read in (
        convert.triage_from_proto,
        convert.status_from_proto,
        convert.request_priority_from_proto,
    ):
        with pytest.raises(InvalidInput, match="unknown"):
            read(unknown)
    with pytest.raises(InvalidInput, match="unknown caveat reason"):
        convert.caveat_from_proto(findings_pb2.Caveat(reason=unknown))
    assert convert.status_from_proto(findings_pb2.FINDING_STATUS_UNSPECIFIED) is None


# --- cost: tensors are read where the message holds them ---------------------------------------


def _views_the_wire(array: np.ndarray) -> bool:
    """An array over the message's bytes (np.frombuffer), not a copy of them."""
    root: object = array
    while isinstance(root, np.ndarray) and not root.flags.owndata:
        root = root.base
    return isinstance(root, bytes)


def test_the_request_converters_read_pixels_and_outputs_without_copying_them() -> None:
    pixels = np.arange(2 * 64 * 64, dtype=np.uint16).reshape(1, 64, 64, 2)
    images = PreprocessJob("p", (DecodedImage(pixels),))
    (image,) = convert.preprocess_request_from_proto(
        convert.preprocess_request_to_proto(images)
    ).images
    assert isinstance(image, DecodedImage) and _views_the_wire(image.pixels)
    assert _views_the_wire(convert.take_pixels(image, None).pixels)
    job = PostprocessJob("p", {"logits": np.ones((4, 3), np.float32)}, ("a", "b", "c", "d"))
    back = convert.postprocess_request_from_proto(convert.postprocess_request_to_proto(job))
    assert _views_the_wire(back.outputs["logits"])
    decoded = convert.decode_response_from_proto(convert.decode_response_to_proto(image))
    assert isinstance(decoded, DecodedImage) and _views_the_wire(decoded.pixels)
