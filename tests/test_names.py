"""Names as Hugging Face writes them (mixed case), stored without collisions anywhere."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p2pdist.errors import RefError
from p2pdist.ref import ModelRef, name_from_folder, parse_ref
from p2pdist.store.cache import Store

from .conftest import make_version_folder, sign_folder, small_state_dict


@pytest.mark.parametrize(
    "name",
    ["meta-llama/Llama-3.1-8B", "Qwen/Qwen2.5-0.5B-Instruct", "gpt2", "org/model", "A/B", "x.Y_z"],
)
def test_hugging_face_names_parse_and_map_to_a_folder_and_back(name: str) -> None:
    ref = parse_ref(f"{name}@v3")
    assert (ref.name, ref.version) == (name, "v3")
    folder = ref.folder_name
    assert "/" not in folder and folder == folder.lower()  # one component, case-proof
    assert name_from_folder(folder) == name


def test_lowercase_names_keep_the_folder_they_always_had() -> None:
    assert ModelRef("org/gpt-2").folder_name == "org--gpt-2"
    assert ModelRef("meta-llama/Llama-3.1-8B").folder_name == "meta-llama--!llama-3.1-8!b"


def test_names_differing_only_in_case_get_folders_differing_beyond_case() -> None:
    names = ["Org/M", "org/m", "org/M", "ORG/m", "oRg/mM", "org/mm"]
    folders = {ModelRef(n).folder_name.casefold() for n in names}
    assert len(folders) == len(names)


@pytest.mark.parametrize("folder", ["org--!", "org--!1", "org--Model", "!!a", "a--b--c"])
def test_folders_that_no_name_makes_are_refused(folder: str) -> None:
    with pytest.raises(RefError):
        name_from_folder(folder)


def test_case_variants_are_stored_side_by_side(
    p2p_home: Path, tmp_path: Path, signing_key: Ed25519PrivateKey
) -> None:
    store = Store(p2p_home)
    made = {}
    for i, name in enumerate(["Org/M", "org/m"]):
        folder = make_version_folder(tmp_path / f"src{i}", small_state_dict(seed=i))
        made[name] = sign_folder(folder, signing_key, name=name, version="v1")
        store.add_version(made[name], folder)
    assert sorted(store.models()) == ["Org/M", "org/m"]
    dirs = [p.name for p in store.models_dir.iterdir()]
    assert len({d.casefold() for d in dirs}) == 2  # distinct on a case-insensitive disk too
    for name, manifest in made.items():
        assert store.manifest(name, "v1").to_bytes() == manifest.to_bytes()
        store.verify(name, "v1")
