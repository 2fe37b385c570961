"""The embedded demo end to end, exactly as `ciard-fast train` runs it (digits, offline): the
CIARD student must clearly beat a naturally trained student under PGD with reasonable clean
accuracy. About a minute and a half on 2 CPU cores."""
import pytest

import ciard_fast

pytestmark = pytest.mark.slow


def test_demo_student_beats_the_natural_student_under_pgd(tmp_path, all_threads):
    result = ciard_fast.train(out_dir=str(tmp_path / "demo"), progress=False)
    ciard_row = result.comparison["ciard student (small_cnn)"]
    natural_row = result.comparison["natural student (small_cnn)"]
    assert ciard_row["pgd_sat"] >= natural_row["pgd_sat"] + 40, result.table
    assert ciard_row["clean"] >= 80, result.table
    assert ciard_row["worst"] <= min(ciard_row[c] for c in ("clean", "fgsm", "pgd_sat", "pgd_trades", "cw"))
    for name in ("results.md", "results.json", "best.pt", "last.pt", "metrics.csv", "curves.png"):
        assert (tmp_path / "demo" / name).is_file(), name
    assert (tmp_path / "demo" / "teachers" / "robust" / "last.pt").is_file()
