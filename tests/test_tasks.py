"""Tasks files (``haddock submit --tasks FILE.tsv``): every row a task, every problem named by line and column."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from haddock.executor.request import EngineSpec, InputVolume, ResultPath
from haddock.executor.sources import InlineSource, LocalSource, S3Source, UrlSource
from haddock.node.client import (
    MAX_TASKS,
    Task,
    TaskInput,
    TaskOutput,
    TasksFileError,
    load_tasks,
    parse_tasks,
)

HEADER = "--env SAMPLE\t--input READS\t--input-recursive REF\t--output BAM\t--output-recursive QC"

REALISTIC = f"""# alignment batch, one row per sample
{HEADER}
s1\ts3://lab-data/reads/s1.fastq.gz\ts3://lab-data/ref/hg38/\ts3://lab-results/bam/s1.bam\ts3://lab-results/qc/s1/

# a sample fetched over https; the reference is on the node
sample two\thttps://example.org/dl/s2%20R1.fq.gz?sig=abc\tfile:///data/ref/hg38:ro\tbam/s2.bam\tqc/s2
s3\tfile:///data/reads/s3.fq:rw\tdata:application/gzip;base64,H4sIAAAAAAAAA\tfile:///scratch/s3.bam\tfile:///scratch/qc3
"""


def _outputs(bam: str, qc: str, bam_file: str) -> list[TaskOutput]:
    return [
        TaskOutput("BAM", bam, False, f"/haddock/outputs/BAM/{bam_file}", "out-bam"),
        TaskOutput("QC", qc, True, "/haddock/outputs/QC", "out-qc"),
    ]


def _env(sample: str, reads: str, bam: str) -> dict[str, str]:
    return {
        "SAMPLE": sample,
        "READS": reads,
        "REF": "/haddock/inputs/REF",
        "BAM": bam,
        "QC": "/haddock/outputs/QC",
    }


EXPECTED = [
    Task(
        index=1,
        env=_env("s1", "/haddock/inputs/READS/s1.fastq.gz", "/haddock/outputs/BAM/s1.bam"),
        inputs=[
            TaskInput("READS", "s3://lab-data/reads/s1.fastq.gz", False, "/haddock/inputs/READS/s1.fastq.gz"),
            TaskInput("REF", "s3://lab-data/ref/hg38/", True, "/haddock/inputs/REF"),
        ],
        outputs=_outputs("s3://lab-results/bam/s1.bam", "s3://lab-results/qc/s1/", "s1.bam"),
    ),
    Task(
        index=2,
        env=_env("sample two", "/haddock/inputs/READS/s2 R1.fq.gz", "/haddock/outputs/BAM/s2.bam"),
        inputs=[
            TaskInput(
                "READS",
                "https://example.org/dl/s2%20R1.fq.gz?sig=abc",
                False,
                "/haddock/inputs/READS/s2 R1.fq.gz",
            ),
            TaskInput("REF", "file:///data/ref/hg38", True, "/haddock/inputs/REF", read_write=False),
        ],
        outputs=_outputs("bam/s2.bam", "qc/s2", "s2.bam"),
    ),
    Task(
        index=3,
        env=_env("s3", "/haddock/inputs/READS/s3.fq", "/haddock/outputs/BAM/s3.bam"),
        inputs=[
            TaskInput("READS", "file:///data/reads/s3.fq", False, "/haddock/inputs/READS/s3.fq", read_write=True),
            TaskInput("REF", "data:application/gzip;base64,H4sIAAAAAAAAA", True, "/haddock/inputs/REF"),
        ],
        outputs=_outputs("file:///scratch/s3.bam", "file:///scratch/qc3", "s3.bam"),
    ),
]


def test_realistic_file() -> None:
    tasks = parse_tasks(REALISTIC, filename="batch.tsv")
    assert tasks == EXPECTED
    assert list(tasks[0].env) == ["SAMPLE", "READS", "REF", "BAM", "QC"]  # header order


def test_paths_and_names_pass_the_executors_rules() -> None:
    for task in parse_tasks(REALISTIC):
        EngineSpec(image="busybox", env=task.env)
        for i in task.inputs:
            assert InputVolume(source=Path("/x"), target=i.container_path).target == i.container_path
        for o in task.outputs:
            assert ResultPath(name=o.output_name, path=o.collect_dir).path == o.collect_dir
        assert [o.collect_dir for o in task.outputs] == ["/haddock/outputs/BAM", "/haddock/outputs/QC"]


def test_bom_and_crlf() -> None:
    text = "\ufeff" + REALISTIC.replace("\n", "\r\n")
    assert parse_tasks(text) == EXPECTED


def test_load_tasks_reads_bom_and_crlf(tmp_path: Path) -> None:
    path = tmp_path / "tasks.tsv"
    path.write_bytes(b"\xef\xbb\xbf" + REALISTIC.replace("\n", "\r\n").encode())
    assert load_tasks(path) == EXPECTED


def test_load_tasks_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"--env A\nok\n\xff\n")
    with pytest.raises(TasksFileError) as info:
        load_tasks(path)
    assert str(info.value) == f"{path} line 3: not UTF-8 text (byte 0xff cannot be decoded)"
    with pytest.raises(TasksFileError) as info:
        load_tasks(tmp_path / "missing.tsv")
    assert str(info.value) == f"cannot read tasks file {tmp_path / 'missing.tsv'}: No such file or directory"
    path.write_text("--input IN\n\ns3://bkt/k\ns3://\n", encoding="utf-8")
    with pytest.raises(TasksFileError) as info:
        load_tasks(path)
    assert str(info.value) == f"{path} line 4, column '--input IN': 's3://' names no bucket: write s3://bucket/key"


def test_env_cells_are_kept_verbatim_and_may_be_empty() -> None:
    [task] = parse_tasks("--env A\t--env b_2\t--env _C\n  two  spaces \t\t#x")
    assert task.env == {"A": "  two  spaces ", "b_2": "", "_C": "#x"}
    assert task.inputs == [] and task.outputs == []


def test_comments_and_blank_lines_do_not_count_as_rows() -> None:
    tasks = parse_tasks("# c\n\n--env A\n# c\nx\n\n\ny\n")
    assert [(t.index, t.env) for t in tasks] == [(1, {"A": "x"}), (2, {"A": "y"})]


def test_header_cells_may_have_extra_spaces() -> None:
    [task] = parse_tasks("  --env   A \t--input B\nx\ts3://bkt/k")
    assert task.env == {"A": "x", "B": "/haddock/inputs/B/k"}


@pytest.mark.parametrize(
    ("cell", "recursive", "uri", "path", "read_write"),
    [
        ("file:///d/x.txt", False, "file:///d/x.txt", "/haddock/inputs/IN/x.txt", False),
        ("file:///d/x.txt:ro", False, "file:///d/x.txt", "/haddock/inputs/IN/x.txt", False),
        ("FILE:///d/x.txt:rw", False, "FILE:///d/x.txt", "/haddock/inputs/IN/x.txt", True),
        ("file:///d/dir/:rw", True, "file:///d/dir/", "/haddock/inputs/IN", True),
        ("file:///", True, "file:///", "/haddock/inputs/IN", False),
        ("http://h:8080/a/b.csv", False, "http://h:8080/a/b.csv", "/haddock/inputs/IN/b.csv", False),
        ("https://h/", False, "https://h/", "/haddock/inputs/IN/input", False),
        ("https://h", False, "https://h", "/haddock/inputs/IN/input", False),
        ("https://h/a/..", False, "https://h/a/..", "/haddock/inputs/IN/input", False),
        ("https://h/a%2Fb", False, "https://h/a%2Fb", "/haddock/inputs/IN/input", False),
        ("https://h/%0A", False, "https://h/%0A", "/haddock/inputs/IN/input", False),
        ("https://h/" + "x" * 201, False, "https://h/" + "x" * 201, "/haddock/inputs/IN/input", False),
        ("s3://bkt/a b/c d.txt", False, "s3://bkt/a b/c d.txt", "/haddock/inputs/IN/c d.txt", False),
        ("s3://bkt/pre/?region=eu-west-1&filter=%5C.fq%24", True, None, "/haddock/inputs/IN", False),
        ("s3://bkt/dir/a%20b.txt?version=v1", False, None, "/haddock/inputs/IN/a b.txt", False),
        ("file:/d/x.txt", False, None, "/haddock/inputs/IN/x.txt", False),
        ("file://localhost/d/x%20y.txt:rw", False, "file://localhost/d/x%20y.txt", "/haddock/inputs/IN/x y.txt", True),
        ("https://h/f.csv#sha256=" + "a" * 64, False, None, "/haddock/inputs/IN/f.csv", False),
        ("data:,hello:ro", False, "data:,hello:ro", "/haddock/inputs/IN/data", False),
        ("data:;tar,x", True, "data:;tar,x", "/haddock/inputs/IN", False),
    ],
)
def test_inputs(cell: str, recursive: bool, uri: str | None, path: str, read_write: bool) -> None:
    flag = "--input-recursive" if recursive else "--input"
    [task] = parse_tasks(f"{flag} IN\n{cell}\n")
    assert task.inputs == [TaskInput("IN", uri or cell, recursive, path, read_write)]
    assert task.env == {"IN": path}
    assert task.inputs[0].source().target == path


def test_inputs_become_storage_sources() -> None:
    sources = [[i.source() for i in task.inputs] for task in parse_tasks(REALISTIC)]
    assert [[type(s).__name__ for s in row] for row in sources] == [
        ["S3Source", "S3Source"],
        ["UrlSource", "LocalSource"],
        ["LocalSource", "InlineSource"],
    ]
    (reads1, ref1), (reads2, ref2), (reads3, ref3) = sources
    assert isinstance(reads1, S3Source) and (reads1.bucket, reads1.key) == ("lab-data", "reads/s1.fastq.gz")
    assert isinstance(ref1, S3Source) and (ref1.key, ref1.prefix) == ("", "ref/hg38/")
    assert isinstance(reads2, UrlSource) and reads2.url == "https://example.org/dl/s2%20R1.fq.gz?sig=abc"
    assert isinstance(ref2, LocalSource) and (ref2.path, ref2.read_write) == ("/data/ref/hg38", False)
    assert isinstance(reads3, LocalSource) and (reads3.path, reads3.read_write) == ("/data/reads/s3.fq", True)
    assert isinstance(ref3, InlineSource) and ref3.parsed().is_tarball
    assert [s.target for s in sources[0]] == ["/haddock/inputs/READS/s1.fastq.gz", "/haddock/inputs/REF"]


@pytest.mark.parametrize(
    ("cell", "recursive", "path"),
    [
        ("s3://bkt/k/out.txt", False, "/haddock/outputs/Out/out.txt"),
        ("s3://bkt", True, "/haddock/outputs/Out"),
        ("s3://bkt/", True, "/haddock/outputs/Out"),
        ("file:///scratch/r.txt", False, "/haddock/outputs/Out/r.txt"),
        ("file:///scratch/dir/", True, "/haddock/outputs/Out"),
        ("r.txt", False, "/haddock/outputs/Out/r.txt"),
        ("a dir/r 1.txt", False, "/haddock/outputs/Out/r 1.txt"),
        (".", False, "/haddock/outputs/Out/output"),
        ("sample:1.txt", False, "/haddock/outputs/Out/sample:1.txt"),
        ("results/", True, "/haddock/outputs/Out"),
        ("s3://bkt/k/out.txt?region=eu-west-1", False, "/haddock/outputs/Out/out.txt"),
        ("s3://bkt/runs/{execution_id}/?archive=1", True, "/haddock/outputs/Out"),
    ],
)
def test_outputs(cell: str, recursive: bool, path: str) -> None:
    flag = "--output-recursive" if recursive else "--output"
    [task] = parse_tasks(f"{flag} Out\n{cell}\n")
    assert task.outputs == [TaskOutput("Out", cell, recursive, path, "out-out")]
    assert task.env == {"Out": path}


def test_long_output_name_is_allowed_up_to_the_executors_limit() -> None:
    name = "O" * 124
    [task] = parse_tasks(f"--output {name}\nx\n")
    assert ResultPath(name=task.outputs[0].output_name, path=task.outputs[0].collect_dir).name == "out-" + "o" * 124


def _error(text: str) -> str:
    with pytest.raises(TasksFileError) as info:
        parse_tasks(text, filename="tasks.tsv")
    return str(info.value)


NOT_A_HEADER = (
    "is not a column header (expected '--env NAME', '--input NAME', '--input-recursive NAME', "
    "'--output NAME' or '--output-recursive NAME')"
)
INPUT_KINDS = "(file://, http(s)://, s3://, data:)"
OUTPUT_KINDS = "(s3://, file:///abs/path, or a relative name)"
BUCKET = "has no valid bucket name (3-255 letters, digits, '.', '_' or '-', starting with a letter or digit)"
SUFFIX = "the ':ro'/':rw' suffix is only for file:// inputs"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # the file as a whole
        ("", "tasks.tsv: no header (expected tab-separated columns like '--env NAME')"),
        ("# only\n\n# comments\n", "tasks.tsv: no header (expected tab-separated columns like '--env NAME')"),
        ("--env A\n", "tasks.tsv: no tasks (a header but no rows)"),
        ("# c\n--env A\r\n\r\n# c\r\n", "tasks.tsv: no tasks (a header but no rows)"),
        # the header
        ("--env A\t--foo B\nx\ty", f"tasks.tsv line 1, column 2: '--foo B' {NOT_A_HEADER}"),
        ("--env\nx", f"tasks.tsv line 1, column 1: '--env' {NOT_A_HEADER}"),
        ("--env A B\nx", f"tasks.tsv line 1, column 1: '--env A B' {NOT_A_HEADER}"),
        ("--env A\t\nx\t", f"tasks.tsv line 1, column 2: '' {NOT_A_HEADER}"),
        ("SAMPLE\nx", f"tasks.tsv line 1, column 1: 'SAMPLE' {NOT_A_HEADER}"),
        ("# c\n--ENV A\nx", f"tasks.tsv line 2, column 1: '--ENV A' {NOT_A_HEADER}"),
        (
            "--env 1A\nx",
            "tasks.tsv line 1, column '--env 1A': environment variable name '1A' is not valid: "
            "use letters, digits and '_', not starting with a digit",
        ),
        (
            "--input A-B\nx",
            "tasks.tsv line 1, column '--input A-B': environment variable name 'A-B' is not valid: "
            "use letters, digits and '_', not starting with a digit",
        ),
        (
            "--env A\t--output haddock_x\nx\ty",
            "tasks.tsv line 1, column '--output haddock_x': environment variable 'haddock_x' uses the prefix "
            "'HADDOCK_', which is reserved for variables the node sets",
        ),
        (
            "--env HADDOCK_NODE\nx",
            "tasks.tsv line 1, column '--env HADDOCK_NODE': environment variable 'HADDOCK_NODE' uses the prefix "
            "'HADDOCK_', which is reserved for variables the node sets",
        ),
        (
            "--input DATA\t--env X\t--output data\nx\ty\tz",
            "tasks.tsv line 1, column '--output data': the name 'data' is already used by column '--input DATA' "
            "(names must be unique, ignoring case)",
        ),
        (
            "--env A\t--env A\nx\ty",
            "tasks.tsv line 1, column '--env A': the name 'A' is already used by column '--env A' "
            "(names must be unique, ignoring case)",
        ),
        (
            f"--output-recursive {'O' * 125}\nx",
            f"tasks.tsv line 1, column '--output-recursive {'O' * 125}': "
            "an output's name must be at most 124 characters long",
        ),
        # rows
        (
            "--env A\t--env B\nx\n",
            "tasks.tsv line 2: 1 cell but the header has 2 columns "
            "(cells are separated by tabs; values cannot contain tabs)",
        ),
        (
            "--env A\nok\n# c\nx\ty\n",
            "tasks.tsv line 4: 2 cells but the header has 1 column "
            "(cells are separated by tabs; values cannot contain tabs)",
        ),
        ("--env A\nx\x00y", "tasks.tsv line 2, column '--env A': the value must not contain NUL bytes"),
        # inputs
        (
            "--env A\t--input DATA\nx\ts3://bkt/k\ny\tftp://x\n",
            f"tasks.tsv line 3, column '--input DATA': 'ftp://x' is not a supported input {INPUT_KINDS}",
        ),
        (
            "--input IN\n/data/x",
            f"tasks.tsv line 2, column '--input IN': '/data/x' is not a supported input {INPUT_KINDS}; "
            "write a path on the node as file:///abs/path",
        ),
        (
            "--env A\t--input IN\nx\t",
            "tasks.tsv line 2, column '--input IN': an input needs a source URI (the cell is empty)",
        ),
        (
            "--input-recursive IN\n",
            "tasks.tsv: no tasks (a header but no rows)",
        ),
        (
            "--env A\t--input-recursive IN\nx\t",
            "tasks.tsv line 2, column '--input-recursive IN': an input needs a source URI (the cell is empty)",
        ),
        (
            "--input IN\nfile://data/x",
            "tasks.tsv line 2, column '--input IN': 'file://data/x' does not name an absolute path on the node: "
            "write file:///abs/path",
        ),
        (
            "--input IN\nfile:data/x",
            "tasks.tsv line 2, column '--input IN': 'file:data/x' does not name an absolute path on the node: "
            "write file:///abs/path",
        ),
        (
            "--input IN\nfile:///data/%2E%2E/x",
            "tasks.tsv line 2, column '--input IN': 'file:///data/%2E%2E/x' must not contain '..'",
        ),
        (
            "--input IN\nfile:///data/../etc/passwd:ro",
            "tasks.tsv line 2, column '--input IN': 'file:///data/../etc/passwd:ro' must not contain '..'",
        ),
        (
            "--input IN\nfile:///data/dir/",
            "tasks.tsv line 2, column '--input IN': 'file:///data/dir/' names a directory: use --input-recursive",
        ),
        (
            "--input IN\nfile:///:ro",
            "tasks.tsv line 2, column '--input IN': 'file:///:ro' names a directory: use --input-recursive",
        ),
        (
            "--input IN\ns3://bkt/k:ro",
            f"tasks.tsv line 2, column '--input IN': 's3://bkt/k:ro': {SUFFIX}",
        ),
        (
            "--input-recursive IN\nhttps://h/d:rw",
            f"tasks.tsv line 2, column '--input-recursive IN': 'https://h/d:rw': {SUFFIX}",
        ),
        (
            "--input IN\ns3://b/k",
            "tasks.tsv line 2, column '--input IN': 's3://b/k': bucket 'b' is not a valid bucket name "
            "(3-255 letters, digits, '.', '_' or '-', starting with a letter or digit)",
        ),
        (
            "--input IN\ns3:///k",
            "tasks.tsv line 2, column '--input IN': 's3:///k' names no bucket: write s3://bucket/key",
        ),
        (
            "--input IN\ns3://bkt/" + "k" * 1025,
            "tasks.tsv line 2, column '--input IN': 's3://bkt/"
            + "k" * 68
            + "...': S3 keys are at most 1024 bytes long",
        ),
        (
            "--input IN\ns3://bkt/k?colour=red",
            "tasks.tsv line 2, column '--input IN': 's3://bkt/k?colour=red': unknown S3 options colour",
        ),
        (
            "--input-recursive IN\ns3://bkt/pre",
            "tasks.tsv line 2, column '--input-recursive IN': 's3://bkt/pre' names a single object: "
            "a directory of objects ends with '/', like s3://bucket/prefix/",
        ),
        (
            "--input IN\nhttps://u:p@h/x?sig=1#sha256=zz",
            "tasks.tsv line 2, column '--input IN': 'https://h/x': sha256 'zz' must be 64 hexadecimal "
            "digits (optionally prefixed with 'sha256:')",
        ),
        (
            "--input IN\nfile:///data/x%00",
            "tasks.tsv line 2, column '--input IN': 'file:///data/x%00': local path must not contain NUL bytes",
        ),
        (
            "--input IN\ns3://bkt",
            "tasks.tsv line 2, column '--input IN': 's3://bkt' names no object: write s3://bucket/key",
        ),
        (
            "--input IN\ns3://bkt/pre/",
            "tasks.tsv line 2, column '--input IN': 's3://bkt/pre/' names a directory: use --input-recursive",
        ),
        (
            "--input-recursive IN\ns3://bkt/",
            "tasks.tsv line 2, column '--input-recursive IN': 's3://bkt/' names a whole bucket: "
            "give a prefix, like s3://bucket/prefix/",
        ),
        (
            "--input IN\nhttps://user:pw@h/a b?sig=secret",
            "tasks.tsv line 2, column '--input IN': 'https://h/a b' must not contain spaces or control characters",
        ),
        (
            "--input IN\nhttps:///path",
            "tasks.tsv line 2, column '--input IN': 'https:///path' has no host",
        ),
        (
            "--input IN\nhttp://h:99999/x",
            "tasks.tsv line 2, column '--input IN': 'http://h:99999/x' is not a valid URL (Port out of range 0-65535)",
        ),
        (
            "--input IN\nhttps://h/" + "x" * 8200,
            "tasks.tsv line 2, column '--input IN': 'https://h/" + "x" * 67 + "...' is longer than 8192 characters",
        ),
        (
            "--input-recursive IN\nhttps://h/dir/",
            "tasks.tsv line 2, column '--input-recursive IN': 'https://h/dir/': an http(s) URL is a single file: "
            "use --input",
        ),
        (
            "--input IN\ndata:abc",
            "tasks.tsv line 2, column '--input IN': 'data:abc' is not a valid data URL "
            "(data_url must contain a ',' between the media type and the data)",
        ),
        (
            "--input IN\ndata:application/gzip;base64,H4sI",
            "tasks.tsv line 2, column '--input IN': 'data:application/gzip;base64,H4sI' is a tar archive, "
            "which is unpacked into a directory: use --input-recursive",
        ),
        (
            "--input-recursive IN\ndata:,hello",
            "tasks.tsv line 2, column '--input-recursive IN': 'data:,hello' is not a tar archive (a tar media type "
            "such as application/gzip, or a ';tar' parameter): use --input for a single file",
        ),
        # outputs
        (
            "--env A\t--output OUT\nx\t",
            "tasks.tsv line 2, column '--output OUT': an output needs a destination (the cell is empty)",
        ),
        (
            "--output-recursive OUT\n\t",
            "tasks.tsv line 2: 2 cells but the header has 1 column "
            "(cells are separated by tabs; values cannot contain tabs)",
        ),
        (
            "--output OUT\nhttps://h/x",
            f"tasks.tsv line 2, column '--output OUT': 'https://h/x' is not a supported output {OUTPUT_KINDS}",
        ),
        (
            "--output OUT\n/scratch/x",
            f"tasks.tsv line 2, column '--output OUT': '/scratch/x' is not a supported output {OUTPUT_KINDS}; "
            "write file:///scratch/x",
        ),
        (
            "--output OUT\nfile://scratch/x",
            "tasks.tsv line 2, column '--output OUT': 'file://scratch/x' does not name an absolute path on the node: "
            "write file:///abs/path",
        ),
        (
            "--output OUT\nfile:///scratch/",
            "tasks.tsv line 2, column '--output OUT': 'file:///scratch/' names a directory: use --output-recursive",
        ),
        (
            "--output OUT\nfile:///x:rw",
            f"tasks.tsv line 2, column '--output OUT': 'file:///x:rw': {SUFFIX}",
        ),
        (
            "--output OUT\ns3://bkt/",
            "tasks.tsv line 2, column '--output OUT': 's3://bkt/' names no object: write s3://bucket/key",
        ),
        (
            "--output OUT\ns3://bkt/dir/",
            "tasks.tsv line 2, column '--output OUT': 's3://bkt/dir/' names a directory: use --output-recursive",
        ),
        (
            "--output-recursive OUT\ns3://x/dir/",
            f"tasks.tsv line 2, column '--output-recursive OUT': 's3://x/dir/' {BUCKET}",
        ),
        (
            "--output OUT\nresults/",
            "tasks.tsv line 2, column '--output OUT': 'results/' names a directory: use --output-recursive",
        ),
        (
            "--output OUT\ns3://bkt//x",
            "tasks.tsv line 2, column '--output OUT': 's3://bkt//x' must not contain an empty path segment ('//')",
        ),
        (
            "--output OUT\na//b",
            "tasks.tsv line 2, column '--output OUT': 'a//b' must not contain an empty path segment ('//')",
        ),
        (
            "--output OUT\ns3://bkt/" + "k" * 1025,
            "tasks.tsv line 2, column '--output OUT': 's3://bkt/" + "k" * 68 + "...' is longer than 1024 bytes",
        ),
        (
            "--output-recursive OUT\n../up",
            "tasks.tsv line 2, column '--output-recursive OUT': '../up' must not contain '..'",
        ),
        (
            "--output-recursive OUT\nfile:///a/../b",
            "tasks.tsv line 2, column '--output-recursive OUT': 'file:///a/../b' must not contain '..'",
        ),
    ],
)
def test_errors(text: str, message: str) -> None:
    assert _error(text) == message


def test_errors_are_value_errors_and_report_the_first_problem() -> None:
    with pytest.raises(ValueError, match=r"^tasks line 3, column '--input IN': 'x' is not a supported input"):
        parse_tasks("--input IN\ns3://bkt/a\nx\ns3://\n")


def test_row_limit() -> None:
    assert len(parse_tasks("--env A\n" + "x\n" * MAX_TASKS)) == MAX_TASKS
    text = "# big\n--env A\n" + "x\n" * (MAX_TASKS + 1)
    assert _error(text) == f"tasks.tsv line {MAX_TASKS + 3}: more than {MAX_TASKS} tasks (split the file)"


_VALUE = st.text(
    st.characters(codec="utf-8", exclude_characters="\t\n\r\x00"),
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(values=st.lists(st.tuples(_VALUE, _VALUE), min_size=1, max_size=5), crlf=st.booleans(), bom=st.booleans())
def test_env_values_round_trip(values: list[tuple[str, str]], crlf: bool, bom: bool) -> None:
    rows = [(a, b) for a, b in values if not a.startswith("#")]  # such lines are comments
    if not rows:
        return
    newline = "\r\n" if crlf else "\n"
    text = ("\ufeff" if bom else "") + newline.join(["--env A\t--env B", *(f"{a}\t{b}" for a, b in rows)])
    tasks = parse_tasks(text)
    assert [(t.index, t.env) for t in tasks] == [(i, {"A": a, "B": b}) for i, (a, b) in enumerate(rows, 1)]
