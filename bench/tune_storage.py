"""Ray Tune's storage for `bench run`: the local file system, except that a "copy" is a hard link.

Tune persists every checkpoint a trial reports (each epoch's, tens of MB: bench/checkpoint.py) by copying it into
``RunConfig.storage_path`` (``<results-dir>/ray``), and the results folder already holds the same immutable file; the
copy was a few percent of a trial's time. pyarrow's ``copy_files`` between two equal file systems calls the file
system's ``copy_file`` per file, so a file system that links there turns each copy into a link: no time, no space, and
Tune's copy still outlives the results-folder file being replaced or deleted (it is the same inode). Imported only
where Ray is (pyarrow comes with it).
"""
from __future__ import annotations

import pyarrow.fs as pafs

from bench.io import link_or_copy


class LinkingLocalFS(pafs.FileSystemHandler):
    """A pyarrow ``FileSystemHandler``: :class:`pyarrow.fs.LocalFileSystem` with ``copy_file`` as a hard link."""

    local = pafs.LocalFileSystem()

    def __eq__(self, other):
        return isinstance(other, LinkingLocalFS)

    def __ne__(self, other):
        return not self == other

    def get_type_name(self):
        return "thingsbench-local-link"

    def copy_file(self, src, dest):
        link_or_copy(src, dest)

    def normalize_path(self, path):
        return self.local.normalize_path(path)

    def get_file_info(self, paths):
        return self.local.get_file_info(paths)

    def get_file_info_selector(self, selector):
        return self.local.get_file_info(selector)

    def create_dir(self, path, recursive):
        self.local.create_dir(path, recursive=recursive)

    def delete_dir(self, path):
        self.local.delete_dir(path)

    def delete_dir_contents(self, path, missing_dir_ok=False):
        self.local.delete_dir_contents(path, missing_dir_ok=missing_dir_ok)

    def delete_root_dir_contents(self):
        raise OSError("thingsbench: refusing to empty the root folder")

    def delete_file(self, path):
        self.local.delete_file(path)

    def move(self, src, dest):
        self.local.move(src, dest)

    def open_input_stream(self, path):
        return self.local.open_input_stream(path)

    def open_input_file(self, path):
        return self.local.open_input_file(path)

    def open_output_stream(self, path, metadata):
        return self.local.open_output_stream(path, metadata=metadata)

    def open_append_stream(self, path, metadata):
        return self.local.open_append_stream(path, metadata=metadata)


def tune_storage() -> pafs.FileSystem:
    """The file system for ``RunConfig.storage_filesystem`` and for the checkpoints a trial reports."""
    return pafs.PyFileSystem(LinkingLocalFS())
