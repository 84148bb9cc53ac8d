"""Tools for development and tests, apart from the product: the SciCat development server (`archiver scicat-dev`)."""
