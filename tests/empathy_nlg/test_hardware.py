"""``auto`` picks bf16 only where it is fast (CUDA, or a CPU that multiplies bf16 natively)."""

import pytest

from empathy_nlg import hardware


@pytest.mark.parametrize("native, device, expected", [
    (True, "cpu", "bfloat16"), (False, "cpu", "float32"), (False, "cuda", "bfloat16"), (False, "cuda:1", "bfloat16"),
])
def test_auto_is_bf16_only_where_it_is_native(monkeypatch, native, device, expected):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: native)
    assert hardware.serving_dtype("auto", device) == expected
    assert hardware.serving_dtype(None, device) == expected


@pytest.mark.parametrize("mode, expected", [("float32", "float32"), ("fp32", "float32"), ("BF16", "bfloat16"),
                                            ("bfloat16", "bfloat16")])
def test_explicit_dtypes_are_kept_whatever_the_cpu(monkeypatch, mode, expected):
    monkeypatch.setattr(hardware, "cpu_has_native_bf16", lambda: False)
    assert hardware.serving_dtype(mode, "cpu") == expected


def test_an_unknown_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="auto, float32 or bfloat16"):
        hardware.serving_dtype("int4", "cpu")


def test_the_cpu_check_reads_the_flags(monkeypatch, tmp_path):
    from pathlib import Path

    real = Path.read_text
    for flags, expected in (("fpu avx2 avx512f avx512_bf16", True), ("fpu avx2 amx_bf16", True), ("fpu avx2", False)):
        monkeypatch.setattr(Path, "read_text", lambda self, *a, _f=flags, **k: _f if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
        assert hardware.cpu_has_native_bf16() is expected
