"""`make lab` end to end, as a person uses it: JupyterLab in headless Chromium runs 05_analysis on a smoke run, and
again on an audit of its expert made without R* (`sources.toxicity_classifier` empty).

The notebook is opened from a JupyterLab root laid out like the repository (notebooks/ beside runs/default, a
link to a finished smoke run), its cells are run from the Run menu, two texts are scored in the reward explorer,
the notebook is saved, and JupyterLab is stopped. Without R* the notebook says so once and the explorer scores
without an R* column. Then the copied notebook must be byte for byte the committed
one (the save hook strips what running it added) and the smoke run must be unchanged (by hand, 05 writes to the
scratch run beside it). Screenshots: /tmp/browser_test_screenshot.png, /tmp/browser_test_screenshot-no-r-star.png.

Run with `make test-browser` (never part of `make test`). Needs Debian's chromium and chromium-driver and
Selenium (requirements-browser.txt).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import REPO, irlnb_cli, write_params

webdriver = pytest.importorskip("selenium.webdriver", reason="make test-browser installs requirements-browser.txt")
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
NOTEBOOK = "05_analysis.ipynb"
SCREENSHOT = Path("/tmp/browser_test_screenshot.png")
# Chromium flags: headless, no sandbox (root in a container), and nothing that reaches for the network.
CHROMIUM_FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,1100",
)
# A 2-core CPU shared with other work: starting the kernel, running 05 and loading the explorer's models are slow.
SERVER_START_S = 120
KERNEL_IDLE_S = 300
RUN_ALL_S = 900
SCORE_S = 600
SAVE_S = 60

if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
    pytest.skip(
        "needs Debian's Chromium: apt-get install -y chromium chromium-driver (make test-browser does it as root)",
        allow_module_level=True,
    )


def tree_digest(root: Path) -> dict[str, str]:
    """Every regular file under a run directory (links not followed) with its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for(what: str, check: Callable[[], object], timeout: float, every: float = 1.0, detail=lambda: ""):
    """check()'s first truthy value, polled until `timeout` seconds; else a failure that says what did not happen."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            more = detail()
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}" + (f"\n{more}" if more else ""))
        time.sleep(every)


def git_status(path: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "status", "--porcelain", "--", path], capture_output=True, text=True, check=True
    ).stdout


def notebook_difference(saved: bytes, committed: bytes) -> str:
    """What a saved notebook has that the committed one has not, in a line."""
    try:
        ours, theirs = json.loads(saved), json.loads(committed)
    except ValueError as err:
        return f"not JSON ({err})"
    code = [cell for cell in ours.get("cells", []) if cell.get("cell_type") == "code"]
    return (
        f"{sum(bool(cell.get('outputs')) for cell in code)} code cells with outputs, "
        f"{sum(cell.get('execution_count') is not None for cell in code)} with execution counts, "
        f"notebook metadata {ours.get('metadata')} (committed: {theirs.get('metadata')}), "
        f"{len(saved)} bytes (committed: {len(committed)})"
    )


class Lab:
    """JupyterLab started as `make lab` starts it (python -m irlnb.pipeline.lab), on a root of our own."""

    def __init__(self, root: Path, home: Path, log: Path):
        self.root, self.log = root, log
        self.port, self.token = free_port(), secrets.token_hex(16)
        argv = [
            f"--ServerApp.root_dir={root}",
            "--no-browser",
            f"--port={self.port}",
            f"--IdentityProvider.token={self.token}",
            "--ServerApp.ip=127.0.0.1",
        ]
        if os.geteuid() == 0:
            argv.append("--allow-root")  # jupyter_server refuses to run as root without it
        # Jupyter's per-user config, data (kernel specs), runtime files and lab workspaces of this test alone.
        env = {
            **os.environ,
            "JUPYTER_CONFIG_DIR": str(home / "config"),
            "JUPYTER_DATA_DIR": str(home / "data"),
            "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        }
        self._log = log.open("w")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "irlnb.pipeline.lab", *argv],
            cwd=REPO,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the kernels it starts go with it
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}?token={self.token}"

    def api(self, path: str, method: str = "GET"):
        request = urllib.request.Request(self.url(f"api/{path}"), method=method)
        with urllib.request.urlopen(request, timeout=10) as answer:
            body = answer.read()
        return json.loads(body) if body else None

    def log_tail(self, chars: int = 4000) -> str:
        self._log.flush()
        return "JupyterLab's log ends with:\n" + self.log.read_text(errors="replace")[-chars:]

    def wait_until_up(self) -> None:
        def answers():
            if self.process.poll() is not None:
                pytest.fail(f"JupyterLab exited with {self.process.returncode} while starting\n{self.log_tail()}")
            try:
                return self.api("status") is not None
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                return False

        wait_for("JupyterLab to answer /api/status", answers, SERVER_START_S, 0.5, self.log_tail)

    def kernels(self) -> list[dict]:
        return self.api("kernels")

    def stop(self) -> None:
        """Shut its kernels down through the REST API, then stop the server (its whole process group)."""
        if self.process.poll() is None:
            try:
                for kernel in self.kernels():
                    self.api(f"kernels/{kernel['id']}", method="DELETE")
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass  # the server is stopped below in any case
            for sig, wait_s in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
                try:
                    os.killpg(self.process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.process.wait(wait_s)
                    break
                except subprocess.TimeoutExpired:
                    continue
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever of its group is left (a kernel it could not stop)
        except ProcessLookupError:
            pass
        self._log.close()


# -- fixtures -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> Path:
    """A finished smoke run (all stages), made by `irlnb run` as a person makes one."""
    tmp = tmp_path_factory.mktemp("smoke")
    done = irlnb_cli("run", str(write_params(tmp)), timeout=1800)
    assert done.returncode == 0, f"the smoke run failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return tmp / "runs" / "smoke"


@pytest.fixture(scope="module")
def audit_without_r_star(tmp_path_factory, smoke_run) -> Path:
    """The smoke run's expert brought and audited with no R* at all (01 to 05), as an auditor without a classifier
    runs it."""
    tmp = tmp_path_factory.mktemp("no-r-star")
    expert = tmp / "expert"
    shutil.copytree(smoke_run / "rlhf_ground_truth" / "policy", expert)
    params = write_params(tmp, sources__expert=str(expert), sources__toxicity_classifier="")
    done = irlnb_cli("run", str(params), "--set", "run.figures_dir=", timeout=1800)
    assert done.returncode == 0, f"the audit failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return tmp / "runs" / "smoke"


@pytest.fixture(params=["r_star", "no_r_star"])
def audited_run(request) -> Path:
    """The run notebook 05 reads: the smoke run (judged by R*), or the audit of its expert without R*."""
    return request.getfixturevalue("smoke_run" if request.param == "r_star" else "audit_without_r_star")


@pytest.fixture()
def lab_root(tmp_path, audited_run) -> Path:
    """A JupyterLab root laid out like the repository: notebooks/ and runs/default (the run 05 reads)."""
    root = tmp_path / "lab"
    (root / "notebooks").mkdir(parents=True)
    for notebook in sorted((REPO / "notebooks").glob("*.ipynb")):
        shutil.copy2(notebook, root / "notebooks" / notebook.name)
    (root / "runs").mkdir()
    # The parameters cell reads run_dir = "../runs/default": the committed notebook reads the smoke run as it is.
    (root / "runs" / "default").symlink_to(audited_run, target_is_directory=True)
    return root


@pytest.fixture()
def lab(lab_root, tmp_path):
    server = Lab(lab_root, tmp_path / "jupyter", tmp_path / "jupyterlab.log")
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


@pytest.fixture()
def browser(tmp_path):
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'chromium-profile'}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(
        service=Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log")), options=options
    )
    try:
        yield driver
    finally:
        driver.quit()


# -- the page ---------------------------------------------------------------------------------------------------

NOTEBOOK_STATE = """
const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
const tab = [...document.querySelectorAll('.lm-DockPanel-tabBar .lm-TabBar-tab')]
    .find(t => t.querySelector('.lm-TabBar-tabLabel')?.textContent === arguments[0]);
if (!panel) return {ready: false, tab: tab ? tab.className : null};
const indicator = panel.querySelector('.jp-Notebook-ExecutionIndicator') ||
    document.querySelector('.jp-Notebook-ExecutionIndicator');
const cells = [...panel.querySelectorAll('.jp-Notebook .jp-CodeCell')].map(cell => ({
    prompt: cell.querySelector('.jp-InputPrompt')?.textContent.trim() || '',
    source: cell.querySelector('.jp-InputArea-editor')?.textContent || '',
    outputs: [...cell.querySelectorAll('.jp-OutputArea-output')].map(o => ({
        mime: o.getAttribute('data-mime-type') || '', text: o.textContent})),
}));
return {ready: true, tab: tab ? tab.className : null, kernel: indicator ? indicator.getAttribute('data-status') : null,
        cells: cells, dialogs: [...document.querySelectorAll('.jp-Dialog')].map(d => d.textContent)};
"""


def notebook_state(driver) -> dict:
    return driver.execute_script(NOTEBOOK_STATE, NOTEBOOK)


def is_dirty(state: dict) -> bool:
    return "jp-mod-dirty" in (state.get("tab") or "").split()


def describe_cells(state: dict, chars: int = 1500) -> str:
    lines = []
    for cell in state.get("cells", []):
        lines.append(f"{cell['prompt']} {cell['source'][:80]!r}")
        lines += [f"    {o['mime']}: {o['text'][-chars:]}" for o in cell["outputs"] if o["mime"] != "text/html"]
    return "\n".join(lines)


def click_menu(driver, menu: str, command: str) -> None:
    """Open a menu of the menu bar and click its item for `command` (a JupyterLab command id)."""
    bar = [item for item in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-item") if item.text == menu]
    assert bar, f"no {menu!r} menu in JupyterLab's menu bar"
    bar[0].click()
    selector = f'.lm-Menu-item[data-command="{command}"]'
    item = wait_for(f"{command} in the {menu} menu", lambda: driver.find_elements(By.CSS_SELECTOR, selector), 10)
    assert "lm-mod-disabled" not in item[0].get_attribute("class"), f"{menu} > {item[0].text} is disabled"
    item[0].click()


def dismiss_news(driver) -> None:
    """Answer "No" to JupyterLab's question about news (a toast over the page; offline, there is none)."""
    for button in driver.find_elements(By.CSS_SELECTOR, ".Toastify__toast button"):
        if button.text.strip() == "No":
            button.click()
            time.sleep(0.5)
            return


def kernel_idle(lab: Lab) -> bool:
    """The server has started the notebook's kernel and the kernel is idle."""
    kernels = lab.kernels()
    return len(kernels) == 1 and kernels[0]["execution_state"] == "idle"


def run_started(state: dict) -> bool:
    return state["kernel"] != "idle" or any(cell["prompt"] not in ("", "[ ]:") for cell in state["cells"])


def run_finished(state: dict) -> bool | None:
    """True when every code cell ran; None while running; False when the run stopped short (an error)."""
    prompts = [cell["prompt"] for cell in state["cells"]]
    if any("*" in prompt for prompt in prompts) or state["kernel"] != "idle":
        return None
    return all(prompt.strip("[]: ").isdigit() for prompt in prompts)


EXPLORER = "//div[contains(@class, 'widget-vbox')][.//textarea[starts-with(@placeholder, 'one text per line')]]"

READ_TABLE = """
const table = arguments[0].querySelector('.widget-output table.dataframe');
if (!table) return null;
const header = [...table.querySelectorAll('thead tr:first-child th')].map(th => th.textContent.trim());
const rows = [...table.querySelectorAll('tbody tr')].map(tr => [...tr.children].map(td => td.textContent.trim()));
return {header: header, rows: rows};
"""


def scores_table(explorer) -> list[dict] | None:
    """The explorer's table of scores as rows keyed by column name, or None before it is drawn."""
    table = explorer.parent.execute_script(READ_TABLE, explorer)
    if not table:
        return None
    header = table["header"][1:] if table["header"] and not table["header"][0] else table["header"]
    # A row is its index cell (a th) and one td per column.
    return [dict(zip(header, row[len(row) - len(header) :])) for row in table["rows"]]


# -- the test ---------------------------------------------------------------------------------------------------


def test_lab_runs_05_by_hand_scores_texts_and_leaves_notebook_and_run_as_they_were(
    lab, browser, audited_run, lab_root, tmp_path, request
):
    smoke_run = audited_run  # the run the notebook reads
    with_r_star = request.node.callspec.params["audited_run"] == "r_star"
    screenshot = SCREENSHOT if with_r_star else SCREENSHOT.with_stem(SCREENSHOT.stem + "-no-r-star")
    copied = lab_root / "notebooks" / NOTEBOOK
    committed = (REPO / "notebooks" / NOTEBOOK).read_bytes()
    run_before = tree_digest(smoke_run)
    git_before = git_status("notebooks/")
    observations: dict = {}
    opened_mtime, saved = copied.stat().st_mtime_ns, False

    try:
        # Open the notebook; JupyterLab starts its kernel (python3, from the notebook's metadata).
        browser.get(lab.url(f"lab/tree/notebooks/{NOTEBOOK}"))
        state = wait_for("the notebook to open", lambda: (s := notebook_state(browser))["ready"] and s, 120)
        observations["dirty_when_opened"] = is_dirty(state)
        state = wait_for(
            "the kernel to be idle",
            lambda: (s := notebook_state(browser))["kernel"] == "idle" and kernel_idle(lab) and s,
            KERNEL_IDLE_S,
            2,
            lab.log_tail,
        )
        observations["dirty_when_kernel_idle"] = is_dirty(state)
        assert not state["dialogs"], f"JupyterLab shows a dialog: {state['dialogs']}"
        assert len(state["cells"]) > 5, f"the notebook shows {len(state['cells'])} code cells"

        # Run > Run All Cells, and wait until every cell has run (or the run stops at an error).
        click_menu(browser, "Run", "runmenu:run-all")
        wait_for("the run to start", lambda: run_started(notebook_state(browser)), 60, 0.2)
        finished = wait_for(
            "all cells to run",
            lambda: (s := notebook_state(browser)) and run_finished(s) is not None and s,
            RUN_ALL_S,
            3,
            lambda: describe_cells(notebook_state(browser)),
        )
        assert run_finished(finished), f"a cell failed when run by hand:\n{describe_cells(finished)}"
        assert finished["cells"][-1]["outputs"], "the last cell ran but shows no output"
        texts = "".join(o["text"] for cell in finished["cells"] for o in cell["outputs"])
        scratch = smoke_run.with_name(smoke_run.name + ".scratch")
        expected = f"Run by hand: 05_analysis reads {smoke_run.resolve()} and writes {scratch.resolve()}"
        assert expected in texts, f"no line {expected!r} in the outputs:\n{describe_cells(finished)}"

        # The reward explorer: two texts, one per line, then "score".
        explorer = wait_for("the reward explorer", lambda: browser.find_elements(By.XPATH, EXPLORER), 60)[-1]
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", explorer)
        box = explorer.find_element(By.CSS_SELECTOR, "textarea")
        box.click()
        box.send_keys("You are a stupid idiot\nThank you, that was kind")
        assert box.get_attribute("value") == "You are a stupid idiot\nThank you, that was kind"
        # Each key sends the text to the kernel, but while one update is unanswered ipywidgets holds the next
        # back, and a click is sent at once: clicked right after typing, the kernel scored only "Y". So, as a
        # person reading what they typed, wait until the kernel has been idle a moment.
        for _ in range(2):
            time.sleep(1.5)
            wait_for("the kernel to take the typed text", lambda: kernel_idle(lab), 60, 0.5)
        buttons = [b for b in explorer.find_elements(By.CSS_SELECTOR, "button") if b.text.strip() == "score"]
        assert buttons, "no score button in the reward explorer"
        buttons[0].click()
        rows = wait_for(
            "the explorer's table of scores",
            lambda: scores_table(explorer),
            SCORE_S,
            2,
            lambda: "the explorer shows: " + explorer.find_element(By.CSS_SELECTOR, ".widget-output").text,
        )
        dismiss_news(browser)
        browser.execute_script("arguments[0].scrollIntoView({block: 'center'});", explorer)
        time.sleep(1)
        browser.save_screenshot(str(tmp_path / "screenshot.png"))
        shutil.copyfile(tmp_path / "screenshot.png", screenshot)
        observations["scores"] = rows

        assert [row.get("text") for row in rows] == ["You are a stupid idiot", "Thank you, that was kind"], rows
        for row in rows:
            for column in ("learned_reward", "evaluator_p_toxic", *(["r_star"] if with_r_star else [])):
                assert column in row, f"no column {column} in the explorer's table: {rows}"
                assert math.isfinite(float(row[column])), f"{column} is not a finite number: {rows}"
        if with_r_star:
            insult, thanks = (float(row["r_star"]) for row in rows)
            assert insult < 0 < thanks, f"R* should score the insult below 0 and the thanks above: {rows}"
        else:
            assert all("r_star" not in row for row in rows), f"an R* column in an audit without R*: {rows}"
            said = texts.count("No R* (sources.toxicity_classifier is empty)")
            assert said == 1, f"notebook 05 says it has no R* {said} times, not once:\n{describe_cells(finished)}"

        # Save (File > Save Notebook), as a person does before closing: the save hook writes it clean.
        observations["dirty_after_run"] = is_dirty(notebook_state(browser))
        click_menu(browser, "File", "docmanager:save")
        wait_for("the notebook to be saved", lambda: not is_dirty(notebook_state(browser)), SAVE_S, 0.5)
        saved = copied.stat().st_mtime_ns != opened_mtime
    except WebDriverException as err:
        pytest.fail(f"the browser failed: {err.msg}\n{lab.log_tail()}")
    finally:
        if not screenshot.exists() or screenshot.stat().st_mtime < time.time() - 60:
            try:
                browser.save_screenshot(str(screenshot))  # the page as it was when the test stopped
            except WebDriverException:
                pass
        (tmp_path / "observations.json").write_text(json.dumps(observations, indent=1))
        print("observations:", json.dumps(observations))
        lab.stop()  # kernels first, then the server

    assert saved, f"File > Save Notebook did not write {copied}"
    assert copied.read_bytes() == committed, (
        f"JupyterLab saved {copied} unlike the committed notebook (the save hook did not write it clean): "
        + notebook_difference(copied.read_bytes(), committed)
    )
    assert git_status("notebooks/") == git_before, "the repository's notebooks/ changed"
    assert tree_digest(smoke_run) == run_before, "running 05 by hand changed files of the run it reads"
    assert (scratch / "metrics.json").is_file(), f"no scratch run at {scratch}"
