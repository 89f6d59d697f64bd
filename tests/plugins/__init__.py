"""Pipelines that exist only for tests, added through an extra pipeline catalogue ($RIS_PIPELINE_CATALOGUES)."""
