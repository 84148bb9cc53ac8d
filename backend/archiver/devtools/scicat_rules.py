"""What the SciCat development server accepts, as data: per request body the fields SciCat whitelists.

SciCat (scicat-backend-next, NestJS) checks bodies with class-validator, unknown properties forbidden.
Each table below follows one of its DTO classes (named in the comment); `check` walks a body against a
table and returns class-validator's messages ("property foo should not exist", "size must be an integer
number", nested ones prefixed "dataFileList.0."). This module is a stand-in's own reading of SciCat's
rules: it deliberately shares nothing with the archiver's client models. Sources: the facts notes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class Field:
    kind: str  # string | int | number | bool | date | email | emails | object | strings | list | any
    required: bool = False
    items: dict[str, Field] | None = None  # kind "list": the table of each item; kind "object": of the object
    not_empty: bool = False
    choices: tuple[str, ...] = ()


def req(kind: str, **more: Any) -> Field:
    return Field(kind, required=True, **more)


def opt(kind: str, **more: Any) -> Field:
    return Field(kind, **more)


Rules = dict[str, Field]

# --- bodies ---

# DataFileDto (src/common/dto/datafile.dto.ts)
DATA_FILE: Rules = {
    "path": req("string"),
    "size": req("number"),
    "time": req("date"),
    "chk": opt("string"),
    "uid": opt("string"),
    "gid": opt("string"),
    "perm": opt("string"),
}

# CreateDatasetOrigDatablockDto: CreateOrigDatablockDto without datasetId, ownerGroup, accessGroups,
# instrumentGroup (src/origdatablocks/dto/create-dataset-origdatablock.ts)
ORIGDATABLOCK: Rules = {
    "size": req("int"),
    "chkAlg": opt("string", not_empty=True),
    "dataFileList": req("list", items=DATA_FILE, not_empty=True),
    "isPublished": opt("bool"),
}

# CreateDatasetDatablockDto: CreateDatablockDto without the same four (src/datablocks/dto/create-dataset-datablock.ts)
DATABLOCK: Rules = {
    "archiveId": req("string"),
    "size": req("int"),
    "packedSize": req("int"),
    "chkAlg": opt("string", not_empty=True),
    "version": req("string"),
    "dataFileList": req("list", items=DATA_FILE, not_empty=True),
}

# LifecycleClass (src/datasets/schemas/lifecycle.schema.ts): field -> (kind, default). A dataset PATCH
# replaces the whole lifecycle: what is not sent falls back to these defaults (dates: the time of the PATCH).
LIFECYCLE_DEFAULTS: dict[str, tuple[str, Any]] = {
    "archivable": ("bool", True),
    "retrievable": ("bool", False),
    "publishable": ("bool", False),
    "dateOfDiskPurging": ("date", "now"),
    "archiveRetentionTime": ("date", "now"),
    "dateOfPublishing": ("date", "now"),
    "publishedOn": ("date", "now"),
    "isOnCentralDisk": ("bool", True),
    "archiveStatusMessage": ("string", "datasetCreated"),
    "retrieveStatusMessage": ("string", ""),
    "archiveReturnMessage": ("any", {}),
    "retrieveReturnMessage": ("any", {}),
    "exportedTo": ("string", None),
    "retrieveIntegrityCheck": ("bool", False),
}
# UpdateDatasetLifecycleDto (src/datasets/dto/update-dataset.dto.ts), body of PATCH datasets/{pid}/datasetlifecycle
LIFECYCLE: Rules = {name: opt(kind) for name, (kind, _) in LIFECYCLE_DEFAULTS.items()} | {
    "storageLocation": opt("string")
}

# UpdateDatasetObsoleteDto + UpdateRawDatasetObsoleteDto / UpdateDerivedDatasetObsoleteDto: what /api/v3
# datasets take (src/datasets/dto/update-*-obsolete.dto.ts). `datasetlifecycle` carries no validator there:
# its content is not checked by the DTO (the database keeps the known lifecycle fields only).
_DATASET_COMMON: Rules = {
    "ownerGroup": req("string"),
    "accessGroups": opt("strings"),
    "instrumentGroup": opt("string"),
    "owner": req("string"),
    "ownerEmail": opt("email"),
    "orcidOfOwner": opt("string"),
    "contactEmail": req("emails"),
    "sourceFolder": req("string"),
    "sourceFolderHost": opt("string"),
    "size": opt("int"),
    "packedSize": opt("int"),
    "numberOfFiles": opt("int"),
    "numberOfFilesArchived": opt("int"),
    "creationTime": req("date"),
    "validationStatus": opt("string"),
    "keywords": opt("strings"),
    "description": opt("string"),
    "datasetName": opt("string"),
    "classification": opt("string"),
    "license": opt("string"),
    "isPublished": opt("bool"),
    "techniques": opt("any"),
    "sharedWith": opt("strings"),
    "relationships": opt("any"),
    "datasetlifecycle": opt("any"),
    "scientificMetadata": opt("object"),
    "scientificMetadataSchema": opt("string"),
    "scientificMetadataValid": opt("bool"),
    "comment": opt("string"),
    "dataQualityMetrics": opt("number"),
    "proposalId": opt("string"),
    "runNumber": opt("string"),
}
RAW_DATASET: Rules = _DATASET_COMMON | {
    "principalInvestigator": req("string"),
    "startTime": opt("date"),
    "endTime": opt("date"),
    "creationLocation": req("string"),
    "dataFormat": opt("string"),
    "sampleId": opt("string"),
    "instrumentId": opt("string"),
    "investigator": opt("any"),
    "inputDatasets": opt("any"),
    "usedSoftware": opt("any"),
    "jobParameters": opt("any"),
    "jobLogData": opt("any"),
}
DERIVED_DATASET: Rules = _DATASET_COMMON | {
    "investigator": req("string"),
    "inputDatasets": req("strings"),
    "usedSoftware": req("strings"),
    "jobParameters": opt("object"),
    "jobLogData": opt("string"),
}
DATASET_TYPES = ("raw", "derived")
# CreateRawDatasetObsoleteDto / CreateDerivedDatasetObsoleteDto add these to the tables above.
DATASET_CREATE_EXTRA: Rules = {
    "pid": opt("string"),
    "type": req("string", choices=DATASET_TYPES),
    "version": opt("string"),
}

# DatasetListDto (src/jobs/dto/dataset-list.dto.ts)
DATASET_LIST_ENTRY: Rules = {"pid": req("string", not_empty=True), "files": req("strings")}

# CreateJobDto (src/jobs/dto/create-job.dto.ts), body of POST /api/v4/jobs
JOB_CREATE_V4: Rules = {
    "type": req("string"),
    "jobParams": req("object"),
    "ownerUser": opt("string"),
    "ownerGroup": opt("string"),
    "contactEmail": opt("email"),
}
# UpdateJobDto (src/jobs/dto/update-job.dto.ts), body of PATCH /api/v4/jobs/{id}
JOB_UPDATE_V4: Rules = {"statusCode": req("string"), "statusMessage": req("string"), "jobResultObject": opt("object")}

# CreateJobDtoV3 / UpdateJobDtoV3 (src/jobs/dto/*.v3.dto.ts). SciCat does not validate these: an interceptor
# (src/jobs/interceptors/*-job-v3-mapping.interceptor.ts) copies just these fields into the v4 body and
# drops any other, and the v4 table above is what is checked.
JOB_CREATE_V3_FIELDS = ("type", "jobParams", "datasetList", "executionTime", "emailJobInitiator")
JOB_UPDATE_V3_FIELDS = ("jobStatusMessage", "jobResultObject", "executionTime")

# Job types the server's job configuration knows (SciCat answers 400 to any other).
JOB_TYPES = ("archive", "retrieve")

# --- the checker ---

_MESSAGES = {  # kind -> (class-validator constraint, message)
    "string": ("isString", "{} must be a string"),
    "int": ("isInt", "{} must be an integer number"),
    "number": ("isNumber", "{} must be a number conforming to the specified constraints"),
    "bool": ("isBoolean", "{} must be a boolean value"),
    "date": ("isDateString", "{} must be a valid ISO 8601 date string"),
    "email": ("isEmail", "{} must be an email"),
    "object": ("isObject", "{} must be an object"),
    "strings": ("isString", "each value in {} must be a string"),
    "list": ("isArray", "{} must be an array"),
}
_EMAIL = re.compile(r"^[^@\s;]+@[^@\s;]+\.[^@\s;]+$")  # like class-validator's isEmail: a top-level domain needed


@dataclass(frozen=True)
class Problem:
    property: str  # dotted path, e.g. "dataFileList.0.path"
    constraint: str  # class-validator's name, e.g. "whitelistValidation"
    message: str  # e.g. "dataFileList.0.property foo should not exist"


def check(body: Any, rules: Rules, partial: bool = False, prefix: str = "") -> list[Problem]:
    """What SciCat would refuse in `body`; `partial`: a PATCH (PartialType), nothing is required."""
    if not isinstance(body, dict):
        return [Problem(prefix.rstrip(".") or "body", "isObject", f"{prefix}an object is expected")]
    problems = [
        Problem(prefix + name, "whitelistValidation", f"{prefix}property {name} should not exist")
        for name in body
        if name not in rules
    ]
    for name, rule in rules.items():
        if name not in body or body[name] is None:
            if rule.required and not partial:
                problems += _value_problems(name, None, rule, prefix)
            continue
        problems += _value_problems(name, body[name], rule, prefix)
    return problems


def _value_problems(name: str, value: Any, rule: Field, prefix: str) -> list[Problem]:
    def problem(constraint: str, message: str) -> list[Problem]:
        return [Problem(prefix + name, constraint, prefix + message.format(name))]

    if rule.kind == "any" and value is not None:
        return []
    if rule.kind == "emails" and not (
        isinstance(value, str) and all(_fits(e.strip(), "email") for e in value.split(";"))
    ):
        # SciCat's CustomEmailList validator (src/datasets/utils/email-list-validator.util.ts)
        shown = "undefined" if value is None else value
        return [
            Problem(
                prefix + name,
                "customEmailList",
                f"Expected an email or a list of semicolon separated emails, got {shown}",
            )
        ]
    if rule.kind == "strings" and not isinstance(value, list):
        return problem("isArray", "{} must be an array")
    if not _fits(value, rule.kind):
        return problem(*_MESSAGES.get(rule.kind, ("isDefined", "{} should not be null or undefined")))
    if rule.choices and value not in rule.choices:
        return problem("isEnum", "{} must be one of the following values: " + ", ".join(rule.choices))
    if rule.not_empty and len(value) == 0:
        return problem("arrayNotEmpty" if rule.kind == "list" else "isNotEmpty", "{} should not be empty")
    if rule.kind == "list":
        return [p for i, item in enumerate(value) for p in check(item, rule.items or {}, prefix=f"{prefix}{name}.{i}.")]
    if rule.kind == "object" and rule.items is not None:
        return check(value, rule.items, prefix=f"{prefix}{name}.")
    return []


def _fits(value: Any, kind: str) -> bool:
    if kind in ("string", "date", "email"):
        if not isinstance(value, str):
            return False
        return (kind != "date" or _is_iso_date(value)) and (kind != "email" or bool(_EMAIL.match(value)))
    if kind == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "bool":
        return isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    if kind == "list":
        return isinstance(value, list)
    return value is not None


def _is_iso_date(value: str) -> bool:
    try:
        datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return True


def known_fields(body: dict, names: tuple[str, ...] | Rules) -> dict:
    """`body` with only the fields in `names`: what SciCat keeps where it drops the rest without an error."""
    return {name: value for name, value in body.items() if name in names}
