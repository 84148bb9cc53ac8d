"""The download script of a retrieval job: a small POSIX shell script users run where they want the data.

It downloads every link with curl, resuming an interrupted transfer (`--continue-at -`), checks each
download against its checksum (sha256sum / md5sum, or shasum / md5 where those are missing), removes
a download that does not match so the next run fetches it again, and unpacks datablocks (tar) into
the dataset's folder. Run again, it skips what is complete and checked. Every value from the job
(paths, URLs) is shell-quoted: a file name can never become a command.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass

from archiver.packing import naming
from archiver.scicat.models import JobResultEntry


@dataclass(frozen=True)
class Download:
    dataset_id: str
    name: str  # a datablock's file name, or a file's path in the dataset
    url: str
    size: int
    algorithm: str  # sha256 | md5
    chk: str
    is_datablock: bool


_FUNCTIONS = r"""set -u
failed=0

checksum() { # algorithm file: prints the file's hex digest
  case "$1" in
    sha256) if command -v sha256sum >/dev/null 2>&1; then sha256sum "$2"; else shasum -a 256 "$2"; fi ;;
    md5) if command -v md5sum >/dev/null 2>&1; then md5sum "$2"; else md5 -r "$2"; fi ;;
    *) echo "unknown checksum algorithm $1" >&2 ;;
  esac | cut -d ' ' -f 1
}

size_of() { wc -c < "$1" | tr -d ' '; }

fetch() { # url target size algorithm checksum unpack_into ('' for a single file)
  url=$1 target=$2 size=$3 algorithm=$4 expected=$5 unpack_into=$6
  mkdir -p "$(dirname "$target")" || { failed=1; return; }
  if [ -f "$target" ] && [ "$(size_of "$target")" -gt "$size" ]; then rm -f "$target"; fi
  if [ ! -f "$target" ] || [ "$(size_of "$target")" -lt "$size" ]; then
    if ! curl --fail --silent --show-error --location --retry 5 --continue-at - --output "$target" "$url"; then
      echo "FAILED download: $target (run this script again to resume; expired links: ask for fresh ones)" >&2
      failed=1; return
    fi
  fi
  actual=$(checksum "$algorithm" "$target")
  if [ "$actual" != "$expected" ]; then
    echo "FAILED checksum: $target is $algorithm $actual, expected $expected; removed, run this script again" >&2
    rm -f "$target"; failed=1; return
  fi
  echo "checked: $target"
  if [ -n "$unpack_into" ] && [ ! -f "$target.unpacked" ]; then
    if tar -xf "$target" -C "$unpack_into"; then
      : > "$target.unpacked"; echo "unpacked: $target into $unpack_into/"
    else
      echo "FAILED unpacking: $target" >&2; failed=1
    fi
  fi
}
"""


def download_script(job_id: str, downloads: list[Download]) -> str:
    """The script for `downloads`: each dataset into its own folder (the PID as one folder name)."""
    total = sum(d.size for d in downloads)
    lines = [
        "#!/bin/sh",
        f"# Downloads of SciCat job {_comment(job_id)}: {len(downloads)} download(s), {total} bytes.",
        "# Each dataset goes into a folder of the current directory named after its PID ('/' as %2F).",
        "# Run it again after an interruption: transfers resume, checked downloads are kept.",
        "# Exit code 0 only when every download is complete, checked (and unpacked).",
        _FUNCTIONS,
    ]
    for d in downloads:
        folder = naming.safe_name(d.dataset_id)
        if d.is_datablock:
            target, unpack_into = f"{folder}/datablocks/{naming.check_relative_path(d.name)}", folder
        else:
            target, unpack_into = f"{folder}/{naming.check_relative_path(d.name)}", ""
        arguments = [d.url, target, str(d.size), d.algorithm, d.chk, unpack_into]
        lines.append("fetch " + " ".join(shlex.quote(a) for a in arguments))
    lines += ['[ "$failed" = 0 ] && echo "all downloads complete and checked"', 'exit "$failed"', ""]
    return "\n".join(lines)


def _comment(text: str) -> str:
    return text.replace("\n", " ").replace("\r", " ")


def job_download_script(job_id: str, results: list[JobResultEntry]) -> str | None:
    """The script for a job's results, when every result carries its checksum (None otherwise)."""
    downloads = []
    for e in results:
        if e.chk is None or e.chk_alg is None:
            return None
        downloads.append(Download(e.dataset_id, e.name, e.url, e.size, e.chk_alg, e.chk, is_datablock=e.type != "file"))
    return download_script(job_id, downloads) if downloads else None
