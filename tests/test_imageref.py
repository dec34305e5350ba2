"""Image references (haddock.executor.imageref): one reading of the OCI grammar for the request model,
image pulls and bidding's image policy."""

from __future__ import annotations

import pytest
from docker.utils import parse_repository_tag
from hypothesis import given
from hypothesis import strategies as st

from haddock.executor.imageref import ImageRef, is_valid, normalize, normalize_name, parse, pull_reference
from haddock.executor.request import EngineSpec

# ---------------------------------------------------------------------------- registry/repository (image policies)
# (moved from tests/test_bidding.py with bidding's normalize_image_name)


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("busybox", "docker.io/library/busybox"),
        ("busybox:1.36", "docker.io/library/busybox"),
        ("busybox@sha256:" + "a" * 64, "docker.io/library/busybox"),
        ("busybox:1.36@sha256:" + "a" * 64, "docker.io/library/busybox"),
        ("library/busybox", "docker.io/library/busybox"),
        ("user/app:2", "docker.io/user/app"),
        ("user/team/app", "docker.io/user/team/app"),
        ("docker.io/busybox", "docker.io/library/busybox"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox"),
        ("index.docker.io/busybox", "docker.io/library/busybox"),
        ("index.docker.io/user/app", "docker.io/user/app"),
        ("haddock-test/busybox:latest", "docker.io/haddock-test/busybox"),
        ("127.0.0.1:5000/x/y:tag", "127.0.0.1:5000/x/y"),
        ("127.0.0.1:5000/x", "127.0.0.1:5000/x"),
        ("localhost/app", "localhost/app"),
        ("localhost:5000/app:1", "localhost:5000/app"),
        ("localhost:5000", "docker.io/library/localhost"),  # Docker reads this as image localhost, tag 5000
        ("localhost", "docker.io/library/localhost"),
        ("ghcr.io/acme/tool:v1", "ghcr.io/acme/tool"),
        ("registry.example.com:443/a/b/c@sha256:" + "0" * 64, "registry.example.com:443/a/b/c"),
        ("[::1]:5000/app:1", "[::1]:5000/app"),
        ("Registry/app", "Registry/app"),  # upper case: a host name, as in Docker
        ("my.registry/app", "my.registry/app"),
        ("app.v2/thing", "app.v2/thing"),  # a dot in the first component makes it a registry
    ],
)
def test_normalize_name(image: str, expected: str) -> None:
    assert normalize_name(image) == expected
    assert normalize_name(expected) == expected


@pytest.mark.parametrize("image", ["", " busybox", "busybox ", "a b", ":tag", "/app", "app/", "a//b", "@sha256:00"])
def test_normalize_name_refuses_what_is_not_a_reference(image: str) -> None:
    with pytest.raises(ValueError, match="is not an image reference"):
        normalize_name(image)


_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}(?:(?:[._]|__|-{1,2})[a-z0-9]{1,6}){0,2}", fullmatch=True)
_PLAIN_COMPONENT = st.from_regex(r"[a-z0-9]{1,6}(?:(?:_|__|-{1,2})[a-z0-9]{1,6}){0,2}", fullmatch=True).filter(
    lambda s: s != "localhost"
)
_HOST_LABEL = st.from_regex(r"[a-zA-Z0-9](?:[a-zA-Z0-9-]{0,6}[a-zA-Z0-9])?", fullmatch=True)
_REGISTRY = st.one_of(
    st.sampled_from(["ghcr.io", "quay.io", "127.0.0.1:5000", "localhost", "localhost:5000", "[::1]:5000"]),
    st.builds(lambda a, b, port: f"{a}.{b}{port}", _HOST_LABEL, _HOST_LABEL, st.sampled_from(["", ":443"])),
)
_TAG = st.one_of(st.just(""), st.from_regex(r":[A-Za-z0-9_][A-Za-z0-9_.-]{0,20}", fullmatch=True))
_DIGEST = st.one_of(st.just(""), st.from_regex(r"@sha256:[0-9a-f]{64}", fullmatch=True))
_PATH = st.lists(_COMPONENT, min_size=1, max_size=3).map("/".join)


@given(
    registry=_REGISTRY,
    path=st.lists(_COMPONENT, min_size=1, max_size=3).map("/".join),
    tag=_TAG,
    digest=_DIGEST,
)
def test_normalize_keeps_an_explicit_registry_and_drops_tag_and_digest(
    registry: str, path: str, tag: str, digest: str
) -> None:
    image = f"{registry}/{path}{tag}{digest}"
    EngineSpec(image=image)  # the generated reference is one the request model accepts
    name = normalize_name(image)
    assert name == f"{registry}/{path}"
    assert normalize_name(name) == name


@given(path=st.lists(_PLAIN_COMPONENT, min_size=1, max_size=3), tag=_TAG, digest=_DIGEST)
def test_normalize_puts_names_without_registry_on_docker_hub(path: list[str], tag: str, digest: str) -> None:
    image = "/".join(path) + tag + digest
    EngineSpec(image=image)
    name = normalize_name(image)
    expected_path = "/".join(path) if len(path) > 1 else f"library/{path[0]}"
    assert name == f"docker.io/{expected_path}"
    assert normalize_name(name) == name
    EngineSpec(image=name)  # still a valid reference, with the same meaning


# ---------------------------------------------------------------------------- the strict parser


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("busybox", ImageRef("docker.io", "library/busybox")),
        ("busybox:1.36", ImageRef("docker.io", "library/busybox", tag="1.36")),
        ("index.docker.io/user/app:v1", ImageRef("docker.io", "user/app", tag="v1")),
        (
            "ghcr.io/org/repo@sha256:" + "a" * 64,
            ImageRef("ghcr.io", "org/repo", digest="sha256:" + "a" * 64),
        ),
        (
            "127.0.0.1:5000/x/y:t@sha256:" + "b" * 64,
            ImageRef("127.0.0.1:5000", "x/y", tag="t", digest="sha256:" + "b" * 64),
        ),
        ("localhost/x_y__z-w:v1.2", ImageRef("localhost", "x_y__z-w", tag="v1.2")),
        ("localhost:5000", ImageRef("docker.io", "library/localhost", tag="5000")),
        ("[::1]:5000/app", ImageRef("[::1]:5000", "app")),
        ("Registry.example/app", ImageRef("Registry.example", "app")),
    ],
)
def test_parse(reference: str, expected: ImageRef) -> None:
    assert parse(reference) == expected
    assert is_valid(reference)


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("busybox", "docker.io/library/busybox:latest"),
        ("busybox:1.36", "docker.io/library/busybox:1.36"),
        ("docker.io/library/busybox:latest", "docker.io/library/busybox:latest"),
        ("user/app", "docker.io/user/app:latest"),
        ("busybox@sha256:" + "c" * 64, "docker.io/library/busybox@sha256:" + "c" * 64),
        ("quay.io/a/b:1@sha256:" + "c" * 64, "quay.io/a/b:1@sha256:" + "c" * 64),
    ],
)
def test_normalize(reference: str, expected: str) -> None:
    assert normalize(reference) == expected
    assert normalize(expected) == expected


@pytest.mark.parametrize(
    "reference",
    [
        "",
        "Busybox",  # upper case in the repository
        "busybox latest",
        " busybox",
        "busybox:",
        "busybox:-x",
        "a//b",
        "/app",
        "app/",
        ":tag",
        "busybox@sha256:00",  # digest too short
        "busybox@sha256:" + "g" * 64,
        "a" * 1025,
        "busybox:" + "t" * 129,
    ],
)
def test_parse_refuses_what_does_not_follow_the_grammar(reference: str) -> None:
    assert not is_valid(reference)
    with pytest.raises(ValueError, match="is not a valid image reference"):
        parse(reference)


@given(registry=st.one_of(st.just(""), _REGISTRY.map(lambda r: r + "/")), path=_PATH, tag=_TAG, digest=_DIGEST)
def test_parse_reads_back_what_it_is_made_of(registry: str, path: str, tag: str, digest: str) -> None:
    reference = f"{registry}{path}{tag}{digest}"
    ref = parse(reference)
    assert ref.tag == (tag[1:] or None)
    assert ref.digest == (digest[1:] or None)
    assert ref.name == normalize_name(reference)
    assert parse(str(ref)).name == ref.name  # the normalised form is a valid reference with the same meaning
    assert normalize(str(ref)) == str(ref)
    EngineSpec(image=str(ref))


@given(registry=st.one_of(st.just(""), _REGISTRY.map(lambda r: r + "/")), path=_PATH, tag=_TAG, digest=_DIGEST)
def test_pull_reference_reads_as_docker_py_does(registry: str, path: str, tag: str, digest: str) -> None:
    """What images.py pulled before (docker-py's parse_repository_tag, tag defaulting to latest) is kept."""
    reference = f"{registry}{path}{tag}{digest}"
    repo, tag_or_digest = parse_repository_tag(reference)
    assert pull_reference(reference) == (repo, tag_or_digest or "latest")
