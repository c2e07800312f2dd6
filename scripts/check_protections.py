"""Switch off one reliability protection at a time and check that a test fails (a small mutation test).

Usage: python scripts/check_protections.py [NAME-SUBSTRING ...]   (restores every file it edits, even on Ctrl-C)
"""
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
MUTANTS = [
 ("flags import validated in a scratch store", "artifix/cli/commands/review.py",
  "        check_import(ctx, g, layer, path)  # before", "        pass  # check_import(ctx, g, layer, path)  # before",
  ["tests/test_bad_inputs.py", "-k", "import"]),
 ("reference checked before sampling", "artifix/cli/commands/repairing.py",
  "    check_real(o[\"real\"])  # a bad reference", "    pass  # a bad reference",
  ["tests/test_bad_inputs.py", "-k", "reference"]),
 ("weights_only=True for checkpoints", "artifix/model/generator.py",
  "weights_only=not trust_pickle", "weights_only=False",
  ["tests/test_bad_inputs.py", "-k", "malicious", "tests/test_safe_loading.py", "-k", "checkpoint or export"]),
 ("weights_only=True for unit stats", "artifix/units/stats/units.py",
  'state = torch.load(path, map_location="cpu", weights_only=True)', 'state = torch.load(path, map_location="cpu", weights_only=False)',
  ["tests/test_safe_loading.py"]),
 ("atomic replace (write in place)", "artifix/io.py",
  "        yield tmp_path\n", "        yield path\n        return\n",
  ["tests/test_atomic_writes.py", "-k", "interrupted and not label and not cleaned"]),
 ("sweep of killed writers' temporaries", "artifix/io.py",
  "    _sweep_stale(path)\n", "",
  ["tests/test_atomic_writes.py", "-k", "killed"]),
 ("classifier flags checked before the store is touched", "artifix/cli/commands/review.py",
  'missing=W.not_enough_labels(f"the label store {o[\'store\']}", 0, 0) if action == "train" else None)', 'missing=None)',
  ["tests/test_bad_inputs.py", "-k", "classifier"]),
 ("empty-message exceptions in the checkpoint reader", "artifix/model/generator.py",
  "    return (str(e).strip().splitlines() or [type(e).__name__])[0][:limit]", "    return str(e).splitlines()[0][:limit]",
  ["tests/test_bad_inputs.py", "-k", "empty"]),
 ("fractional whole numbers refused", "artifix/config.py",
  "    if opt.parse is int and isinstance(value, float) and not value.is_integer():", "    if False:",
  ["tests/test_properties.py", "-k", "numbers", "tests/test_bad_inputs.py", "-k", "fraction"]),
 ("text options refuse booleans/tables", "artifix/config.py",
  "        raise UserError(f\"{where}: invalid value {value!r} for '{opt.name}' (expected text", "        return value\n        raise UserError(f\"{where}: invalid value {value!r} for '{opt.name}' (expected text",
  ["tests/test_properties.py", "-k", "text_options", "tests/test_bad_inputs.py", "-k", "config"]),
 ("poisoned cache recomputed", "artifix/units/scoring.py",
  "        except UserError:\n            pass  # a damaged", "        except ValueError:\n            pass  # a damaged",
  ["tests/test_safe_loading.py", "-k", "poisoned"]),
 ("Chan merge of moments", "artifix/units/stats/units.py",
  "    m2 = m2_a + m2_b + delta * delta * (na * nb / (na + nb).clamp(min=1))", "    m2 = m2_a + m2_b",
  ["tests/test_properties.py", "-k", "merge"]),
 ("np.load allow_pickle=False", "artifix/metrics/reference.py",
  "            arr = np.load(path, mmap_mode=\"r\", allow_pickle=False)\n            return", "            arr = np.load(path, mmap_mode=\"r\", allow_pickle=True)\n            return",
  ["tests/test_safe_loading.py", "-k", "audit"]),
 ("import validated before writing (one transaction)", "artifix/labels/transfer.py",
  "        row, mask_rel = _parse_flag(run, rec, default_reviewer, where)",
  "        try:\n            row, mask_rel = _parse_flag(run, rec, default_reviewer, where)\n        except UserError:\n            break",
  ["tests/test_properties.py", "-k", "invalid_row"]),
 ("NaN/Inf output check", "artifix/model/generator.py",
  "    if not torch.isfinite(out).all():\n", "    if False:\n",
  ["tests/test_bad_inputs.py", "-k", "NaN or Inf"]),
 ("temporary removed when a write fails", "artifix/io.py",
  "        tmp_path.unlink(missing_ok=True)\n        raise\n", "        raise\n",
  ["tests/test_atomic_writes.py", "-k", "interrupted and not label and not cleaned"]),
 ("import mask paths kept inside the flags folder", "artifix/labels/transfer.py",
  '    if not rel or "\\x00" in rel:', '    return root / rel\n    if not rel or "\\x00" in rel:',
  ["tests/test_bad_inputs.py", "-k", "import"]),
]
only = sys.argv[1:]
missed = 0
for name, f, old, new, tests in MUTANTS:
    if only and not any(o in name for o in only):
        continue
    p = ROOT / f
    src = p.read_text()
    assert src.count(old) == 1, (name, src.count(old))
    p.write_text(src.replace(old, new))
    try:
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "--no-header", "-p", "no:cacheprovider", *tests],
                           cwd=ROOT, capture_output=True, text=True)
        last = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-300:]
        print(f"{'CAUGHT ' if r.returncode == 1 else 'MISSED!'} {name}: {last}", flush=True)
        missed += r.returncode != 1
    finally:
        p.write_text(src)
sys.exit(1 if missed else 0)
