"""``manage.py make_synthetic_refcoco --out DIR --images N [--seed S] [--refcoco-shaped]``: a REFER-layout dataset."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser


class Command(BaseCommand):
    help = (
        "Write a small synthetic dataset in the exact REFER layout (refcoco, refcoco+, refcocog refs pickles, "
        "instances.json with polygons, COCO-named JPEGs) with known answers: flat-coloured shapes named by colour."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--out", required=True, type=Path, help="folder to write (the benchmark's --data-root)"
        )
        parser.add_argument(
            "--images", required=True, type=int, help="number of images (each has 4-5 shapes)"
        )
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument(
            "--width", type=int, default=None, help="image width in pixels (default 128; 640 RefCOCO-shaped)"
        )
        parser.add_argument(
            "--height", type=int, default=None, help="image height in pixels (default 96; 480 RefCOCO-shaped)"
        )
        parser.add_argument(
            "--refcoco-shaped",
            action="store_true",
            help="COCO-size images, about 2.5 refs and 7 sentences per image, an image's refs in one split",
        )

    def handle(self, *args: Any, **opts: Any) -> None:
        from workers.engine.data.synthetic import write_synthetic_refcoco

        try:
            summary = write_synthetic_refcoco(
                opts["out"],
                opts["images"],
                seed=opts["seed"],
                width=opts["width"],
                height=opts["height"],
                refcoco_shaped=opts["refcoco_shaped"],
            )
        except (ValueError, OSError) as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(
            f"Wrote {summary.n_images} images and {summary.n_annotations} annotations under {summary.root}"
        )
        for key, n in summary.n_refs.items():
            self.stdout.write(f"  {key}: {n} refs, {summary.n_sentences[key]} sentences")
        self.stdout.write(
            f"Try: python manage.py benchmark --dataset refcoco --split val --pipeline global_local "
            f"--data-root {summary.root}"
        )
