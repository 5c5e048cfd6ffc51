"""`coe experts train`: train one expert on a labelled folder of images."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from coe.config import CoeConfig
from coe.core.console import progress_bar, show
from coe.core.imaging import ImageDecodeError, read_image
from coe.core.names import readable
from coe.ingest import discover
from coe.models import expert_weights_folder
from experts.base import ExpertCard, TrainableExpert, TrainingDataError, create_expert

CLASS_FOLDERS = {"real": 0, "0_real": 0, "fake": 1, "1_fake": 1}


def train_expert_on_folder(
    config: CoeConfig, card: ExpertCard, data: Path, out: Path | None, console: Console
) -> dict:
    expert = create_expert(card)
    if not isinstance(expert, TrainableExpert):
        raise TrainingDataError(f"expert {card.name!r} ({card.family}) is not trained by coe")
    class_dirs = {data / folder: label for folder, label in CLASS_FOLDERS.items() if (data / folder).is_dir()}
    needed = {0, 1} if expert.needs_fakes else {0}
    if not needed <= set(class_dirs.values()):
        wanted = "a real/ and a fake/ subfolder (or 0_real/ and 1_fake/)" if expert.needs_fakes else "a real/ (or 0_real/) subfolder"
        raise TrainingDataError(
            f"{data} needs {wanted}; found "
            f"{sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else 'no folder'}"
        )
    images, labels, skipped = [], [], {}
    items = [(item, label) for folder, label in class_dirs.items() for item in discover([folder])]
    with progress_bar(console, "reading training images") as progress:
        task = progress.add_task("read", total=len(items))
        for item, label in items:
            try:
                images.append(read_image(item.path, config.ingest).pixels)
                labels.append(label)
            except ImageDecodeError as error:
                skipped[readable(item.path)] = error.error.code.value
            progress.advance(task)
    if skipped:
        console.print(f"skipped {len(skipped)} unreadable file(s); see the report's `skipped`", style="yellow")
    if not needed <= set(labels):
        kinds = "real and fake" if expert.needs_fakes else "real"
        raise TrainingDataError(f"{data}: need readable {kinds} images, got {len(labels)} image(s)")
    destination = out or expert_weights_folder(config, card)
    show(console, f"training {card.name} on {labels.count(0)} real and {labels.count(1)} fake images")
    expert.fit(images, labels).save(destination)
    return {"saved_to": str(destination), "meta": expert.meta, "skipped": skipped}
