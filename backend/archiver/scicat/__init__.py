"""SciCat: pydantic models of its objects and an httpx client for the archiver's calls (its development server
is in devtools/)."""
