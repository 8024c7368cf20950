"""Server frames stay byte-identical to the json module's compact, unescaped output (orjson only makes it faster)."""

import json

from hypothesis import given
from hypothesis import strategies as st

from service.errors import Refused
from service.realtime.protocol import decode, encode

scalars = st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70) | st.text()
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4), max_leaves=12
)


@given(st.dictionaries(st.text(), values, max_size=6))
def test_encode_matches_compact_unescaped_json(obj: dict) -> None:
    """Every frame the server can build encodes to exactly the bytes json.dumps(ensure_ascii=False) gives."""
    assert encode(obj) == json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def test_decode_keeps_the_json_module_edge_cases() -> None:
    """NaN, out-of-range floats and repeated keys read as before; non-objects are still refused."""
    assert decode('{"a": NaN, "a": 2, "b": 1e400}') == {"a": 2, "b": float("inf")}
    for bad in ("[1]", "nope", '{"a":', ""):
        try:
            decode(bad)
        except Refused:
            continue
        raise AssertionError(bad)
