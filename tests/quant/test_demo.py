"""The quant demo: trains, quantizes and reports sane numbers."""
from __future__ import annotations

from gencore.quant import demo


def test_demo_quantizes_the_digits_model_with_a_small_accuracy_change():
    lines = []
    result = demo.run(out=lines.append, steps=60)
    assert set(result) == {"float", "int4 g32", "int4 g128", "int8 per channel"}
    base = result["float"]["accuracy"]
    assert base > 0.85
    for name, r in result.items():
        assert abs(r["accuracy"] - base) < 0.05, name
        if name != "float":
            assert 0 < r["logit_change"] < 0.2 and r["weight_bytes"] < result["float"]["weight_bytes"] / 3, name
    assert result["int8 per channel"]["logit_change"] < result["int4 g128"]["logit_change"]
    assert any("int4 g128" in line for line in lines)
