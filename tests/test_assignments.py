"""The autograded assignments in assignments/ work with otter-grader as an instructor uses them.

For every assignment, `otter assign` generates the student notebook and the autograder zip from
the source notebook into a temporary folder, and `otter run` (offline, no Docker) grades three
submissions with that zip:

- the solutions notebook that `otter assign` writes (the source with its solutions in place):
  full marks on every autograded question;
- the student notebook as handed out (the stubs unfilled): less than full marks on every
  autograded question;
- the solutions notebook with one deliberate mistake (`MISTAKES`): the questions the mistake
  breaks lose points, the questions it does not touch keep theirs.

Scores are read from the results.json that `otter run` writes, since it exits 0 whatever the
score. The grading runs two at a time, once for the module. The source notebooks themselves are
executed by nbval (the README's test command covers assignments/). Needs the `course` extra:
pip install -e ".[course]".
"""
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import nbformat
import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
ASSIGNMENTS = ROOT / "assignments"
CHECKS_FILE = "assignment_checks.py"
GRADING_TIMEOUT_S = 900          # one `otter run`; assignment 3 trains a model inside it


@dataclass(frozen=True)
class Mistake:
    """A one-line change to a solution, and what grading must make of it."""
    solution_line: str          # found exactly once in the solutions notebook's code
    wrong_line: str
    loses_points: tuple[str, ...]
    keeps_points: tuple[str, ...]


MISTAKES = {
    # the textbook norm: sqrt(0) has an infinite slope, so the gradient at zero is NaN
    "01_squash": Mistake(
        "norm = squared_norm.clamp_min(torch.finfo(s.dtype).tiny).sqrt()",
        "norm = squared_norm.sqrt()",
        loses_points=("q1",), keeps_points=("q2",)),
    # the softmax over the children (axis 1) instead of the parents
    "02_routing": Mistake(
        "return weights / weights.sum(dim=-1, keepdim=True)",
        "return weights / weights.sum(dim=1, keepdim=True)",
        loses_points=("q1", "q2", "q3"), keeps_points=()),
    # the absent classes' term without its weight lambda = 0.5
    "03_margin_loss_capsnet": Mistake(
        "+ down_weight * (1 - present) * F.relu(lengths - m_minus) ** 2)",
        "+ (1 - present) * F.relu(lengths - m_minus) ** 2)",
        loses_points=("q1",), keeps_points=("q2",)),
    # the entropy in nats, not divided by log n_out
    "04_routing_critique": Mistake(
        "return -torch.special.xlogy(couplings, couplings).sum(dim=-1) / math.log(couplings.shape[-1])",
        "return -torch.special.xlogy(couplings, couplings).sum(dim=-1)",
        loses_points=("q1", "q2"), keeps_points=()),
}


def source_notebooks() -> dict[str, Path]:
    return {folder.name: folder / f"{folder.name}.ipynb"
            for folder in sorted(ASSIGNMENTS.iterdir()) if folder.is_dir()
            and (folder / f"{folder.name}.ipynb").exists()}


def assignment_config(notebook: nbformat.NotebookNode) -> dict:
    first = notebook.cells[0]
    assert first.cell_type == "raw" and first.source.startswith("# ASSIGNMENT CONFIG")
    return yaml.safe_load(first.source)


def autograded_questions(notebook: nbformat.NotebookNode) -> list[str]:
    """Names of the questions that are not `manual: true`, in order."""
    questions = []
    for cell in notebook.cells:
        if cell.cell_type == "raw" and cell.source.startswith("# BEGIN QUESTION"):
            config = yaml.safe_load(cell.source)
            if not config.get("manual", False):
                questions.append(config["name"])
    return questions


def with_mistake(solutions: Path, mistake: Mistake, destination: Path) -> Path:
    """A copy of the solutions notebook with mistake.solution_line replaced, in its own folder."""
    notebook = nbformat.read(solutions, as_version=4)
    cells = [cell for cell in notebook.cells
             if cell.cell_type == "code" and mistake.solution_line in cell.source]
    assert len(cells) == 1 and cells[0].source.count(mistake.solution_line) == 1, (
        f"{solutions.name}: expected the line {mistake.solution_line!r} exactly once in the "
        f"solutions (found in {len(cells)} cells); update MISTAKES after editing the solution")
    cells[0].source = cells[0].source.replace(mistake.solution_line, mistake.wrong_line)
    destination.mkdir(parents=True)
    path = destination / solutions.name
    nbformat.write(notebook, path)
    return path


# Once in CI, with two gradings starting side by side, a notebook's kernel died before it
# answered; the same grading passed when run again. Only this start-up failure is retried.
KERNEL_START_FAILURE = "Kernel died before replying to kernel_info"


def otter(*arguments: str, cwd: Path) -> subprocess.CompletedProcess:
    # One thread each: two gradings run side by side on a 2-core machine, and the notebooks'
    # PyTorch would otherwise start a thread per core in each of them.
    environment = {**os.environ, "OMP_NUM_THREADS": "1"}
    for attempt in range(2):
        result = subprocess.run([sys.executable, "-m", "otter", *arguments], cwd=cwd,
                                env=environment, capture_output=True, text=True,
                                timeout=GRADING_TIMEOUT_S)
        if result.returncode == 0 or KERNEL_START_FAILURE not in result.stdout + result.stderr:
            break
    assert result.returncode == 0, (
        f"otter {' '.join(arguments)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n"
        f"{result.stderr[-3000:]}")
    return result


def grade(autograder_zip: Path, submission: Path, output: Path) -> dict[str, dict]:
    """{question: {"score", "max_score", "output"}} from otter run's results.json."""
    output.mkdir(parents=True)
    otter("run", "--no-logo", "-a", str(autograder_zip), "-o", str(output), str(submission),
          cwd=submission.parent)
    results = json.loads((output / "results.json").read_text())
    return {test["name"]: test for test in results["tests"] if "max_score" in test}


@dataclass
class Grading:
    questions: list[str]
    solutions: dict[str, dict]
    student: dict[str, dict]
    mistake: dict[str, dict]


@pytest.fixture(scope="module")
def gradings(tmp_path_factory) -> dict[str, Grading]:
    pytest.importorskip("otter", reason='the assignments need the course extra: '
                                        'pip install -e ".[course]"')
    work = tmp_path_factory.mktemp("assignments")
    jobs, questions = {}, {}
    for name, source in source_notebooks().items():
        questions[name] = autograded_questions(nbformat.read(source, as_version=4))
        dist = work / name
        otter("assign", "--no-pdfs", str(source), str(dist), cwd=ROOT)
        (autograder_zip,) = (dist / "autograder").glob("*-autograder_*.zip")
        solutions = dist / "autograder" / source.name
        student = dist / "student" / source.name
        wrong = with_mistake(solutions, MISTAKES[name], work / f"{name}-mistake")
        jobs[name] = [(autograder_zip, notebook, work / f"{name}-results-{kind}")
                      for kind, notebook in (("solutions", solutions), ("student", student),
                                             ("mistake", wrong))]
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {name: [pool.submit(grade, *job) for job in name_jobs]
                   for name, name_jobs in jobs.items()}
        return {name: Grading(questions[name], *(future.result() for future in name_futures))
                for name, name_futures in futures.items()}


def test_there_are_at_least_four_assignments_each_with_a_mistake():
    names = list(source_notebooks())
    assert len(names) >= 4, f"expected at least 4 assignments in assignments/, found {names}"
    assert sorted(MISTAKES) == sorted(names), "every assignment needs exactly one entry in MISTAKES"


def test_every_assignment_ships_the_same_checks_file():
    copies = {name: (source.parent / CHECKS_FILE).read_text()
              for name, source in source_notebooks().items()}
    reference = (ASSIGNMENTS / next(iter(copies)) / CHECKS_FILE).read_text()
    different = [name for name, text in copies.items() if text != reference]
    assert not different, (f"{CHECKS_FILE} differs in {different}: otter assign only ships files "
                           "from the notebook's own folder, so keep every copy identical")


def test_source_notebooks_are_committed_without_outputs_and_ship_their_checks():
    for name, source in source_notebooks().items():
        notebook = nbformat.read(source, as_version=4)
        config = assignment_config(notebook)
        assert config["name"] == name, f"{source}: ASSIGNMENT CONFIG name must be {name!r}"
        assert CHECKS_FILE in config["files"], f"{source}: list {CHECKS_FILE} under files:"
        assert config["tests"] == {"files": True, "ok_format": False}, (
            f"{source}: tests must be exception-based test files (Colab needs files)")
        with_outputs = [index for index, cell in enumerate(notebook.cells)
                        if cell.cell_type == "code" and (cell.outputs or cell.execution_count)]
        assert not with_outputs, f"{source}: cells {with_outputs} have stored outputs"


def test_setup_cells_install_capsule_lib_from_the_books_repository():
    repository = yaml.safe_load((ROOT / "_config.yml").read_text())["repository"]
    install = f'%pip install -q "capsule_lib @ git+{repository["url"]}@{repository["branch"]}"'
    for name, source in source_notebooks().items():
        notebook = nbformat.read(source, as_version=4)
        setup = next(cell for cell in notebook.cells if cell.cell_type == "code")
        assert install in setup.source, f"{source}: the setup cell must contain {install}"
        assert "grader = otter.Notebook()" in setup.source, f"{source}: setup must start otter"


def failures(results: dict[str, dict]) -> str:
    return "\n".join(f"{name}: {test['score']}/{test['max_score']}\n{test['output'][-1500:]}"
                     for name, test in results.items() if test["score"] < test["max_score"])


@pytest.mark.parametrize("name", list(source_notebooks()))
def test_solutions_get_full_marks(gradings, name):
    grading = gradings[name]
    assert sorted(grading.solutions) == sorted(grading.questions)
    assert not failures(grading.solutions), f"{name} solutions lost points:\n{failures(grading.solutions)}"


@pytest.mark.parametrize("name", list(source_notebooks()))
def test_unfilled_student_notebook_loses_points_on_every_question(gradings, name):
    grading = gradings[name]
    full = [question for question, test in grading.student.items()
            if test["score"] >= test["max_score"]]
    assert sorted(grading.student) == sorted(grading.questions)
    assert not full, f"{name}: the student notebook as handed out gets full marks on {full}"


@pytest.mark.parametrize("name", list(source_notebooks()))
def test_a_deliberate_mistake_loses_the_points_it_should(gradings, name):
    mistake, results = MISTAKES[name], gradings[name].mistake
    kept = [question for question in mistake.loses_points
            if results[question]["score"] >= results[question]["max_score"]]
    lost = [question for question in mistake.keeps_points
            if results[question]["score"] < results[question]["max_score"]]
    assert not kept, f"{name}: {mistake.wrong_line!r} still gets full marks on {kept}"
    assert not lost, f"{name}: {mistake.wrong_line!r} also loses points on {lost}:\n{failures(results)}"
