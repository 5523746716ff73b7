"""The README's measured numbers are held to the recorded runs they quote."""

from __future__ import annotations

from irlnb.pipeline import readme

RECORDS = {
    "default": {"irl.test.auc_mean": 0.7581, "rlhf.change": -0.6213, "timing.total_s": 1382.4},
    "bench": {"rlhf_step.seconds": 7.061},
}


def test_a_marked_number_must_equal_its_record_in_its_format():
    text = (
        "AUC 0.758<!--irl.test.auc_mean:.3f-->, change −62%<!--rlhf.change:.0%-->, "
        "1,382<!--timing.total_s:,.0f--> s, step 7.06<!--bench:rlhf_step.seconds:.2f--> s"
    )
    assert readme.check(text, RECORDS) == []
    wrong = text.replace("0.758", "0.759").replace("7.06", "7.10")
    problems = [str(p) for p in readme.check(wrong, RECORDS)]
    assert problems == [
        "README.md:1: 0.759 is not default:irl.test.auc_mean = 0.758",
        "README.md:1: 7.10 is not bench:rlhf_step.seconds = 7.06",
    ]
    assert readme.rewrite(wrong, RECORDS) == text


def test_a_missing_record_or_key_is_a_problem():
    assert [str(p) for p in readme.check("1.0<!--gone:x.y:.1f--> 2.0<!--nope.key:.1f-->", RECORDS)] == [
        "README.md:1: no record regress/gone.metrics.json for x.y",
        "README.md:1: nope.key is not in regress/default.metrics.json",
    ]


def test_inside_a_measured_section_every_decimal_needs_a_source():
    text = (
        "Paper 80.4% before.\n<!-- measured -->\n| a | 0.758<!--irl.test.auc_mean:.3f--> |\n"
        "| b | 0.812 |\npaper 80.4%<!--given--> and `lr 5e-5 0.3` and 12%\n<!-- /measured -->\n"
    )
    assert [str(p) for p in readme.check(text, RECORDS)] == [
        "README.md:4: 0.812 has no source (<!--KEY:FORMAT--> or <!--given-->)",
        "README.md:5: 12% has no source (<!--KEY:FORMAT--> or <!--given-->)",
    ]


def test_an_unmarked_decimal_is_reported_on_its_own_line_when_the_same_digits_are_marked_earlier():
    text = "<!-- measured -->\n| a | 0.19<!--given--> |\n| b | **0.19**<!--given--> |\n<!-- /measured -->\n"
    assert [str(p) for p in readme.check(text, RECORDS)] == [
        "README.md:3: 0.19 has no source (<!--KEY:FORMAT--> or <!--given-->)",
    ]


def test_the_readme_quotes_its_records_exactly():
    problems = readme.check_readme()
    assert not problems, "\n".join(map(str, problems)) + "\n(irlnb readme --write rewrites them from the records)"


def test_the_readme_quotes_measured_numbers_at_all():
    """The check above passes vacuously on a README without numbers: the results must be marked ones."""
    text = readme.README.read_text()
    sections = readme.SECTION.findall(text)
    assert sections, "README.md has no <!-- measured --> section"
    marked = sum(len(readme.MARKED.findall(section)) for section in sections)
    assert marked >= 20, f"README.md's measured sections quote only {marked} recorded numbers"


def test_every_figure_file_the_readme_names_is_in_the_repository():
    """A partial run once replaced the published figures with 8 of its own; the README kept pointing at the rest."""
    import re

    from irlnb.layout import REPO_ROOT

    named = set(re.findall(r"figures/[\w./-]+?\.(?:png|pdf|md|csv|json)\b", (REPO_ROOT / "README.md").read_text()))
    assert "figures/toxicity_table.md" in named  # the pattern reads the README's own links
    assert sorted(name for name in named if not (REPO_ROOT / name).is_file()) == []
