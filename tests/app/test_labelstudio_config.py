"""Which BrushLabels tag a Label Studio prediction answers for, read from the project's
labeling config: names, the task's data key, the class of each <Label>, and the refusals
(their text is the 422 problem's detail Label Studio shows)."""

from __future__ import annotations

import pytest

from app.imaging.masks.labelstudio import (
    MAX_CONFIG_CHARS,
    BrushTarget,
    LabelConfigError,
    brush_target,
)

CLASSES = ["red", "green", "blue"]


def config(
    image: str = '<Image name="img" value="$picture"/>',
    labels: str = "",
    brush: str = 'name="paint" toName="img"',
) -> str:
    labels = labels or '<Label value="Red"/><Label value="green"/>'
    return f"<View>{image}<BrushLabels {brush}>{labels}</BrushLabels></View>"


def refusal(label_config: str, classes: list[str] = CLASSES) -> str:
    with pytest.raises(LabelConfigError) as caught:
        brush_target(label_config, classes)
    return str(caught.value)


@pytest.mark.parametrize("label_config", [None, ""])
def test_without_a_config_label_studio_default_names(label_config: str | None) -> None:
    assert brush_target(label_config, CLASSES) == BrushTarget(
        "tag", "image", "image", {0: "red", 1: "green", 2: "blue"}
    )


def test_config_names_and_labels() -> None:
    assert brush_target(config(), CLASSES) == BrushTarget(
        "paint", "img", "picture", {0: "Red", 1: "green"}
    )


def test_config_of_the_largest_size_is_read() -> None:
    base = config()
    largest = base.replace("</View>", " " * (MAX_CONFIG_CHARS - len(base)) + "</View>")
    assert len(largest) == MAX_CONFIG_CHARS
    assert brush_target(largest, CLASSES).from_name == "paint"
    over = largest.replace("</View>", " </View>")
    assert refusal(over) == f"the labeling config is over {MAX_CONFIG_CHARS} characters"
    assert MAX_CONFIG_CHARS == 262144


def test_comments_pass_and_declarations_are_refused() -> None:
    commented = config().replace("<BrushLabels", "<!-- the brush --><BrushLabels")
    assert brush_target(commented, CLASSES).labels == {0: "Red", 1: "green"}
    # Well-formed and otherwise answerable, but an entity could expand: refused unparsed.
    declared = '<!DOCTYPE View [<!ENTITY red "Red">]>' + config(labels='<Label value="&red;"/>')
    message = "the labeling config may not declare a DOCTYPE or entities"
    assert refusal(declared) == message
    assert refusal("<!DOCTYPE View>" + config()) == message


def test_not_xml_is_refused_with_the_parser_reason() -> None:
    message = refusal("<View><BrushLabels name='b' toName='i'></View>")
    assert message.startswith("the labeling config is not well-formed XML: mismatched tag")


def test_no_brush_labels() -> None:
    assert refusal(
        '<View><Image name="i" value="$i"/><Labels name="l" toName="i">'
        '<Label value="red"/></Labels></View>'
    ) == ("the labeling config has no <BrushLabels>; this backend predicts brush masks")


@pytest.mark.parametrize(
    "brush", ['toName="img"', 'name="paint"', "", 'name="" toName="img"', 'name="p" toName=""']
)
def test_brush_labels_needs_both_names(brush: str) -> None:
    assert refusal(config(brush=brush)) == "<BrushLabels> needs name and toName attributes"


def test_data_key_comes_from_the_image_named_by_to_name() -> None:
    two = '<Image name="other" value="$other"/><Image name="img" value="$photo_url"/>'
    assert brush_target(config(image=two), CLASSES).data_key == "photo_url"
    # Another tag that shares the name is not the image; without one the key is "image".
    text = '<Text name="img" value="$caption"/>'
    assert brush_target(config(image=text), CLASSES).data_key == "image"
    assert brush_target(config(image=""), CLASSES).data_key == "image"


@pytest.mark.parametrize(
    ("image", "key"),
    [
        ('<Image name="img"/>', "image"),  # no value: Label Studio's "$image"
        ('<Image name="img" value="picture"/>', "image"),  # not a $variable
        ('<Image name="img" value="$Picture"/>', "Picture"),  # the key keeps its case
    ],
)
def test_data_key_fallbacks(image: str, key: str) -> None:
    assert brush_target(config(image=image), CLASSES).data_key == key


def test_only_label_children_with_a_value_name_classes() -> None:
    labels = '<Label/><Label value="GREEN"/><Choice value="red"/><Label value="Green"/>'
    # A <Label> without a value names no class, not even one called like a placeholder.
    target = brush_target(config(labels=labels), ["red", "green", "xxxx", "None"])
    assert target.labels == {1: "GREEN"}  # the first spelling of a class wins


def test_no_label_names_a_class() -> None:
    labels = '<Label value="cat"/><Label/><Label value="dog"/>'
    assert refusal(config(labels=labels)) == (
        "no <Label> of <BrushLabels name='paint'> names a class of this model "
        "(labels ['cat', '', 'dog'], classes ['red', 'green', 'blue'])"
    )


def test_refusal_lists_at_most_twenty_labels() -> None:
    labels = "".join(f'<Label value="l{n}"/>' for n in range(25))
    offered = [f"l{n}" for n in range(20)]
    assert refusal(config(labels=labels), ["red"]) == (
        "no <Label> of <BrushLabels name='paint'> names a class of this model "
        f"(labels {offered}, classes ['red'])"
    )


def test_a_comment_after_a_lone_angle_bracket_is_not_a_declaration() -> None:
    """`<` then a comment: the text holds "<!" only as the comment's opening, which the
    check must not take for a DOCTYPE (removing "<!--" first would join "<" and "!")."""
    config = (
        '<?x <<!--! ?><View><Image name="i" value="$img"/>'
        '<BrushLabels name="t" toName="i"><Label value="cell"/></BrushLabels></View>'
    )
    target = brush_target(config, ["membrane", "cell"])
    assert (target.from_name, target.data_key) == ("t", "img")
