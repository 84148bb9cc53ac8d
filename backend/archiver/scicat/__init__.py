"""SciCat: pydantic models of its objects, an httpx client for the archiver's calls, a development server."""
