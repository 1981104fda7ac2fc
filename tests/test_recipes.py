import pytest

from phi2kit.recipes import PHI_LORA_TARGETS, TASKS, Recipe, get_recipe


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("profile", ["tiny", "t4", "ampere"])
def test_every_task_has_a_recipe(task, profile):
    r = get_recipe(task, profile)
    assert r.task == task
    assert set(r.target_modules) <= set(PHI_LORA_TARGETS)


def test_classifier_recipe_saves_head():
    assert get_recipe("classifier", "t4").task_type == "SEQ_CLS"


def test_overrides_and_validation():
    assert get_recipe("chat", "tiny", max_steps=3).max_steps == 3
    with pytest.raises(ValueError, match="target_modules is empty"):
        Recipe("chat", quantize_4bit=False, target_modules=())
    with pytest.raises(ValueError, match="unknown task"):
        get_recipe("summarize", "tiny")
