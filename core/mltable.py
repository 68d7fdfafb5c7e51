"""Azure ML's MLTable folders, torch-free: a job's data given as `{path: ./train-mltable, type: mltable}`
is a folder whose `MLTable` file (YAML) says which JSONL file holds the labelled images and how to
read it, as Azure's tools write it:

    paths:
      - file: ./train_annotations.jsonl
    transformations:
      - read_json_lines: {encoding: utf8, invalid_lines: error, include_path_column: false}
      - convert_column_types:
          - {columns: image_url, column_type: stream_info}

`data_file` turns any data reference (a JSONL file, an MLTable folder or its MLTable file, on a disk
or in a bucket) into the JSONL file to read, so that the trainer, check-data and validate read a
reference the same way (through `annotations.read_records`). What the MLTable asks for is read as
it says, or refused with its file, line and field: one JSONL `file` (paths relative to the MLTable
folder, which they may not leave, or URLs); reading it as JSON lines in UTF-8, invalid lines an
error (as our reader treats them); `image_url` converted to stream info (what an image URL is here
anyway). A transformation that would change the rows or columns (`filter`, `take`, `drop_columns`,
...), a `pattern` or `folder` of files, another encoding, or `invalid_lines: drop` is refused, never
ignored: training on other data than Azure would is worse than a clear message.

Bounded: the file is read up to MAX_BYTES (Azure's are a few hundred bytes), YAML aliases are
refused (no expansion) and nesting stops at MAX_DEPTH.
"""
from __future__ import annotations

import os
import posixpath
from typing import Any

import yaml

from . import addresses
from .problems import Problems
from .storage import filesystem, is_url, join, resolve, with_retries

MLTABLE = "MLTable"     # the file's name in the folder, as Azure spells it
MAX_BYTES = 64 * 1024
MAX_DEPTH = 16          # Azure's nest 6 deep (a conversion's list of columns)

_TOP = ("paths", "transformations", "type", "$schema", "metadata", "traits")  # metadata, traits: no effect on rows
_READ_JSON_LINES = ("path", "encoding", "invalid_lines", "include_path_column", "partition_size")
_ENCODINGS = ("utf8", "utf8bom")   # what the JSONL reader reads (it skips a BOM)
_CONVERSIONS = ("convert_column_types", "convert_column_to_type")


def data_file(url: str, problems: Problems) -> str | None:
    """The JSONL file that the data reference `url` names: `url` itself when it is not a folder; for
    an MLTable folder (or its MLTable file), the JSONL file its MLTable lists. None, with the reasons
    added to `problems`, when the MLTable cannot be read as a JSONL file."""
    fs, path = filesystem(url)
    if posixpath.basename(path.rstrip("/")) == MLTABLE:
        table, table_path = url, path
    # (A web server has no folders: fsspec would download the file to look for links in it.)
    elif not addresses.is_web(url) and with_retries(lambda: fs.isdir(path)):
        table, table_path = join(url, MLTABLE), join(path, MLTABLE)
    else:
        return url  # a JSONL file; if it is missing, its reader says so
    try:
        raw = with_retries(lambda: fs.cat_file(table_path, start=0, end=MAX_BYTES + 1))
    except FileNotFoundError:
        problems.add(url, None, f"a folder without an {MLTABLE} file: give a JSONL file, or an MLTable folder "
                                f"(its {MLTABLE} file lists the JSONL file)")
        return None
    if len(raw) > MAX_BYTES:
        problems.add(table, None, f"more than {MAX_BYTES} bytes: an {MLTABLE} file lists its data in a few lines")
        return None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        problems.add(table, None, f"not UTF-8 text (byte {exc.start})")
        return None
    return _Reader(table, problems).jsonl(text)


class _Reader:
    """One MLTable file's YAML nodes, checked; each problem named by its field and line."""

    def __init__(self, source: str, problems: Problems):
        self.source = source
        self.problems = problems
        self.found: list[tuple[int, str, str]] = []   # (line, field, message), listed in the file's order

    def add(self, node: Any, field: str, message: str) -> None:
        self.found.append((node.start_mark.line + 1, field, message))

    def jsonl(self, text: str) -> str | None:
        root = _compose(text, self)
        if root is None:
            return None
        if not isinstance(root, yaml.MappingNode):
            self.problems.add(self.source, None, f"must be a mapping (paths, transformations), got {_shown(root)}",
                              root.start_mark.line + 1)
            return None
        url = self.checked(root)
        for line, field, message in sorted(self.found, key=lambda found: found[0]):
            self.problems.add(self.source, field, message, line)
        return None if self.found else url

    def checked(self, root: Any) -> str | None:
        """The JSONL file's URL, once every field is checked (what is wrong, in self.found)."""
        top = self.mapping(root, "")
        for key, key_node, _ in top.values():
            if key not in _TOP:
                self.add(key_node, key, f"unknown field (known: {', '.join(_TOP)})")
        if "type" in top and _scalar(top["type"][2]) != "mltable":
            self.add(top["type"][2], "type", f"must be mltable, got {_shown(top['type'][2])}")
        files = self.paths(top["paths"][2]) if "paths" in top else []
        if "paths" not in top:
            self.add(root, "paths", "is required: the JSONL file of the labelled images (- file: ./train.jsonl)")
        named = self.transformations(top["transformations"][2]) if "transformations" in top else None
        if "transformations" not in top:
            self.add(root, "transformations", "is required: read_json_lines (image data is read as JSON lines)")
        if named is not None and files and posixpath.normpath(named[0]) != posixpath.normpath(files[0][0]):
            self.add(named[1], named[2], f"{named[0]!r} is not the file that paths lists ({files[0][0]!r})")
        if not files:
            return None
        reference, node = files[0]
        return self.resolve(reference, node, "paths[0].file")

    def paths(self, node: Any) -> list[tuple[str, Any]]:
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.add(node, "paths", "must be a list with one entry, - file: ./train.jsonl")
            return []
        files = []
        for i, item in enumerate(node.value):
            entry = self.mapping(item, f"paths[{i}]")
            for key, key_node, value in entry.values():
                if key == "file" and _scalar(value):
                    files.append((_scalar(value).strip(), value))
                elif key == "file":
                    self.add(value, f"paths[{i}].file", f"must be a file's path, got {_shown(value)}")
                elif key in ("pattern", "folder"):
                    self.add(key_node, f"paths[{i}].{key}", f"a {key} of files is not read here: list the "
                                                            "JSONL file itself (- file: ./train.jsonl)")
                else:
                    self.add(key_node, f"paths[{i}].{key}", "unknown kind of path (known: file)")
        if len(files) > 1:
            self.add(node, "paths", f"lists {len(files)} files; one JSONL file is read (a record is named by "
                                    "its file and line, and the validation split by its lines): merge them")
        return files

    def transformations(self, node: Any) -> tuple[str, Any, str] | None:
        """Checks every transformation; returns read_json_lines' `path` (its node, its field) when it names one."""
        if not isinstance(node, yaml.SequenceNode):
            self.add(node, "transformations", "must be a list of transformations")
            return None
        named, reads = None, 0
        for i, item in enumerate(node.value):
            for name, name_node, value in self.mapping(item, f"transformations[{i}]").values():
                field = f"transformations[{i}].{name}"
                if name == "read_json_lines":
                    reads += 1
                    named = self.read_json_lines(value, field) or named
                elif name in _CONVERSIONS:
                    self.conversions(value, field)
                elif name.startswith("read_"):
                    self.add(name_node, field, "image data is read as JSON lines (read_json_lines)")
                else:
                    self.add(name_node, field, "would change the rows or columns, which is not done here: "
                                               "apply it to the JSONL file instead")
        if reads != 1:
            self.add(node, "transformations", f"must read the file as JSON lines once (read_json_lines), "
                                              f"found {reads}")
        return named

    def read_json_lines(self, node: Any, field: str) -> tuple[str, Any, str] | None:
        options = self.mapping(node, field) if not _is_empty(node) else {}
        for key, key_node, value in options.values():
            if key not in _READ_JSON_LINES:
                self.add(key_node, f"{field}.{key}", f"unknown option (known: {', '.join(_READ_JSON_LINES)})")
        encoding = options.get("encoding")
        if encoding and _scalar(encoding[2]) not in _ENCODINGS:
            self.add(encoding[2], f"{field}.encoding", f"{_shown(encoding[2])}: the JSONL file is read as UTF-8 "
                                                       f"({' or '.join(_ENCODINGS)})")
        invalid = options.get("invalid_lines")
        if invalid and _scalar(invalid[2]) != "error":
            self.add(invalid[2], f"{field}.invalid_lines",
                     f"{_shown(invalid[2])}: an invalid line is an error here, named with its line, never dropped "
                     "(invalid_lines: error)")
        path = options.get("path")
        return (_scalar(path[2]).strip(), path[2], f"{field}.path") if path and _scalar(path[2]) else None

    def conversions(self, node: Any, field: str) -> None:
        for i, item in enumerate(node.value if isinstance(node, yaml.SequenceNode) else [node]):
            where = f"{field}[{i}]" if isinstance(node, yaml.SequenceNode) else field
            conversion = self.mapping(item, where)
            columns = conversion.get("columns")
            names = [] if columns is None else \
                [_scalar(c) for c in columns[2].value] if isinstance(columns[2], yaml.SequenceNode) \
                else [_scalar(columns[2])]
            kind = _scalar(conversion["column_type"][2]) if "column_type" in conversion else None
            if names != ["image_url"] or kind != "stream_info":
                self.add(item, where, f"converts {names or 'no column'} to {kind or 'nothing'}: only image_url to "
                                      "stream_info is read here (the other columns are read as the JSON holds them)")

    def mapping(self, node: Any, field: str) -> dict[str, tuple[str, Any, Any]]:
        """A mapping node's entries: key -> (key, key node, value node)."""
        if not isinstance(node, yaml.MappingNode):
            self.add(node, field, f"must be a mapping, got {_shown(node)}")
            return {}
        out: dict[str, tuple[str, Any, Any]] = {}
        for key_node, value in node.value:
            key = str(key_node.value)
            if key in out:
                self.add(key_node, f"{field}.{key}".lstrip("."), "appears twice")
            out[key] = (key, key_node, value)
        return out

    def resolve(self, reference: str, node: Any, field: str) -> str | None:
        """The JSONL file's URL: a relative path stays inside the MLTable's folder (as an image_url
        stays inside its JSONL's: a shared data set may not read the files of the machine that trains)."""
        if reference.lower().startswith(("azureml://", "amldatastore://")):
            self.add(node, field, f"{reference!r}: a datastore URI; give the path relative to the MLTable folder "
                                  "or a storage URL (az://, s3://, gs://, https://)")
            return None
        if is_url(reference) or reference.startswith("/"):
            return reference
        inside = posixpath.normpath(reference)
        folder = self.source.rsplit("/", 1)[0]
        url = resolve(reference, self.source)
        real_folder = None if is_url(folder) else os.path.realpath(folder)
        if inside == ".." or inside.startswith("../") or \
                real_folder and os.path.commonpath([os.path.realpath(url), real_folder]) != real_folder:
            self.add(node, field, f"{reference!r} leaves the MLTable folder (use an absolute path or URL instead)")
            return None
        return url


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses aliases (nothing expands) and stops nesting at MAX_DEPTH."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.MarkedYAMLError(problem="YAML aliases are not read in an MLTable file",
                                       problem_mark=self.peek_event().start_mark)
        if self.depth >= MAX_DEPTH:
            raise yaml.MarkedYAMLError(problem=f"nested more than {MAX_DEPTH} levels deep (the limit)",
                                       problem_mark=self.peek_event().start_mark)
        self.depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _compose(text: str, reader: _Reader) -> Any:
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        reader.problems.add(reader.source, None, f"YAML: {exc.problem or exc}", mark.line + 1 if mark else None)
        return None
    except yaml.YAMLError as exc:
        reader.problems.add(reader.source, None, f"YAML: {exc}")
        return None
    finally:
        loader.dispose()
    if node is None:
        reader.problems.add(reader.source, None, "empty: it lists the JSONL file (paths: [- file: ./train.jsonl])")
    return node


def _scalar(node: Any) -> str | None:
    return node.value if isinstance(node, yaml.ScalarNode) else None


def _is_empty(node: Any) -> bool:
    """`read_json_lines:` with nothing after it (a null)."""
    return isinstance(node, yaml.ScalarNode) and node.tag == "tag:yaml.org,2002:null"


def _shown(node: Any) -> str:
    if isinstance(node, yaml.ScalarNode):
        return repr(node.value[:100])
    return "a list" if isinstance(node, yaml.SequenceNode) else "a mapping"
