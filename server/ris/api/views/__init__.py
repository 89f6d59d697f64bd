"""Thin API views: parse with an input serializer, call one service or selector, answer with an output one."""
