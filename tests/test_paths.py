from streetlib import paths


def test_portable_is_relative_inside_the_output_root_and_absolute_outside(tmp_path, monkeypatch):
    root = tmp_path / "root"
    monkeypatch.setenv("STREETLIB_ROOT", str(root))
    inside = paths.resolve("data/splits/demo-seed42.json")
    assert paths.portable(inside) == "data/splits/demo-seed42.json"
    assert paths.resolve(paths.portable(inside)) == inside  # the record resolves back to the file
    outside = tmp_path / "elsewhere" / "model.keras"
    assert paths.portable(outside) == str(outside)
    assert paths.portable(root / "models" / ".." / "data" / "x.npy") == "data/x.npy"
