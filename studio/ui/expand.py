"""Expand tab: pick seeds, a teacher, rounds and sampling; start a background expansion job, watch its
progress, stop and resume it (the shared job panel, ``ui.jobs.JobPanel``, which also lists jobs of every kind).
New conversations appear in the Data tab.

Handlers return dicts keyed by component. The teacher's text (the latest conversation) and error messages are
escaped before the page's Markdown shows them (``ui.common``): a model's HTML is shown as text, never live."""

from __future__ import annotations

import gradio as gr
import pandas as pd

from ..evol import OPERATIONS, EvolConfig
from ..expand import JOB_KIND, ExpandConfig, ExpansionPrompts
from ..registry import GenParams
from .common import chat_messages, chatbot, guarded, md_text, model_choices, scroll_js, source_choices
from .jobs import JobPanel

DEFAULT_PROMPTS = ExpansionPrompts()


def build(studio) -> dict:
    """Lay out the Expand tab and wire its events. Returns the components refreshed on tab select."""
    store, jobs = studio.store, studio.jobs

    gr.Markdown("Each seed instruction becomes a conversation: round 1 the teacher answers it; in every later "
                "round the teacher, playing a curious user, asks a follow-up about another area of the same "
                "topic and then answers it (the WizardVicunaLM method).")
    with gr.Row():
        with gr.Column():
            source = gr.Dropdown(source_choices(studio, with_all=False), label="Seeds from source",
                                 elem_id="expand-source")
            n_seeds = gr.Number(value=5, precision=0, minimum=1, label="How many seeds", elem_id="expand-n")
            unexpanded = gr.Checkbox(value=True, label="Only seeds not expanded yet", elem_id="expand-unexpanded")
            seeds_info = gr.Markdown(elem_id="expand-seeds-info")
        with gr.Column():
            names = model_choices(studio)
            teacher = gr.Dropdown(names, value=names[0] if names else None, label="Teacher (any registry model)",
                                  elem_id="expand-teacher")
            rounds = gr.Slider(1, 10, value=3, step=1, label="Rounds per conversation", elem_id="expand-rounds")
            batch = gr.Slider(1, 32, value=5, step=1, label="Seeds in flight with a local teacher (each advances "
                              "on its own; an endpoint takes its entry's 'requests at once')", elem_id="expand-batch")
        with gr.Column():
            max_new = gr.Slider(16, 4096, value=256, step=16, label="Max new tokens per answer",
                                elem_id="expand-max-new")
            q_max = gr.Slider(16, 512, value=96, step=8, label="Max new tokens per follow-up question",
                              elem_id="expand-q-max")
            temperature = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature (0 = greedy)",
                                    elem_id="expand-temperature")
            top_p = gr.Slider(0.05, 1, value=0.9, step=0.05, label="Top-p", elem_id="expand-top-p")
            seed = gr.Textbox("", label="Random seed (empty = random)", elem_id="expand-seed", max_lines=1)
    with gr.Accordion("Prompts (editable; their version is stored with every conversation)", open=False):
        system = gr.Textbox(DEFAULT_PROMPTS.system, label="Teacher's system message", lines=2,
                            elem_id="expand-system")
        followup = gr.Textbox(DEFAULT_PROMPTS.followup, lines=6, elem_id="expand-followup",
                              label="Curious-user prompt for follow-up questions: {topic} = the seed, "
                                    "{transcript} = the conversation so far")
        prompt_version = gr.Markdown(f"Prompt version: `{DEFAULT_PROMPTS.version}`", elem_id="expand-prompt-version")
        reset_prompts = gr.Button("Reset to defaults", size="sm")
    start_btn = gr.Button("Start expansion", variant="primary", elem_id="expand-start")
    panel = JobPanel(studio, "expand", empty="No job running.")
    job_id = panel.job
    latest = chatbot(label="Latest conversation of this job", height=320, elem_id="expand-latest",
                     feedback_options=None, group_consecutive_messages=False)
    timer = gr.Timer(1.0, active=True)

    # ----------------------------------------------------------------------------- handlers
    def _seed(v):
        v = str(v or "").strip()
        if not v:
            return None
        if not v.lstrip("-").isdigit():
            raise ValueError(f"random seed must be a whole number, not '{v}'")
        return int(v)

    def _prompts(system_v, followup_v):
        return ExpansionPrompts(system=system_v or "", followup=followup_v or "")

    @guarded(studio, "viewer", "Editing the prompts")
    def show_version(system_v, followup_v) -> dict:
        p = _prompts(system_v, followup_v)
        try:
            p.validate()
            return {prompt_version: f"Prompt version: `{p.version}`"}
        except ValueError as e:  # the message may quote the edited prompt: shown as text
            return {prompt_version: f"⚠️ {md_text(str(e))}"}

    def seeds_summary(source_id, only_new) -> dict:
        if not source_id:
            return {seeds_info: "Import an instruction file in the Data tab first."}
        total = store.list_seeds(int(source_id))[1]
        left = store.list_seeds(int(source_id), unexpanded_only=True)[1]
        return {seeds_info: f"{total} seeds in this source, {left} not expanded yet."}

    @guarded(studio, "editor", "Running an expansion")
    def start(source_id, n, only_new, teacher_v, rounds_v, batch_v, max_new_v, q_max_v, temp_v, top_p_v, seed_v,
              system_v, followup_v):
        if not source_id:
            raise ValueError("choose a source with seed instructions (import one in the Data tab)")
        if not teacher_v:
            raise ValueError("choose a teacher model")
        cfg = ExpandConfig(
            teacher=teacher_v, rounds=int(rounds_v), batch_size=int(batch_v), source_id=int(source_id),
            answer=GenParams(max_new_tokens=int(max_new_v), temperature=float(temp_v), top_p=float(top_p_v),
                             seed=_seed(seed_v)),
            question_max_new_tokens=int(q_max_v), prompts=_prompts(system_v, followup_v))
        jid = studio.expand(cfg, n=int(n or 0), unexpanded_only=bool(only_new))
        return {job_id: jid, **poll(jid, source_id)}

    def poll(jid, source_id=None) -> dict:
        out = panel.view(jid)
        out[latest] = gr.update()
        if source_id:  # "N not expanded yet" follows the job (no reload needed)
            out.update(seeds_summary(source_id, True))
        if jid:
            newest = store.list_conversations(job_id=int(jid), limit=1, sort="id", descending=True)[0]
            if len(newest):  # the teacher's text, shown as text (its HTML escaped)
                out[latest] = chat_messages(store.get_conversation(int(newest["id"].iloc[0]))["messages"])
        return out

    # ----------------------------------------------------------------------------- wiring
    settings_inputs = [source, n_seeds, unexpanded, teacher, rounds, batch, max_new, q_max, temperature, top_p, seed,
                       system, followup]
    poll_outputs = panel.outputs + [latest, seeds_info]
    watch = guarded(studio, "viewer", "Following an expansion")(poll)
    # the progress bar is below the settings: the page scrolls to it once the job is started
    start_btn.click(start, settings_inputs, poll_outputs).then(None, None, None,
                                                               js=scroll_js("#expand-progress", "center"))
    panel.wire(poll, [job_id, source], poll_outputs)
    timer.tick(watch, [job_id, source], poll_outputs, show_progress="hidden")
    job_id.change(watch, [job_id, source], poll_outputs, show_progress="hidden")
    for c in (system, followup):
        c.change(show_version, [system, followup], [prompt_version], show_progress="hidden")
    reset_prompts.click(guarded(studio, "viewer", "Resetting the prompts")(
        lambda: {system: DEFAULT_PROMPTS.system, followup: DEFAULT_PROMPTS.followup}), None, [system, followup])
    source.change(guarded(studio, "viewer", "Choosing seeds")(seeds_summary), [source, unexpanded], [seeds_info])

    def refresh(source_id, teacher_v) -> dict:
        choices = source_choices(studio, with_all=False)
        ids = [c[1] for c in choices]
        src = source_id if source_id in ids else (ids[0] if ids else None)
        names_now = model_choices(studio)
        t = teacher_v if teacher_v in names_now else (names_now[0] if names_now else None)
        running = [j for j in jobs.active() if store.get_job(j)["kind"] == JOB_KIND]
        out = {source: gr.update(choices=choices, value=src), teacher: gr.update(choices=names_now, value=t),
               **seeds_summary(src, True)}
        if running:
            out[job_id] = running[-1]
        return out

    evo = _build_evol(studio)

    @guarded(studio, "viewer", "Viewing the Expand tab")
    def refresh_all(source_id, teacher_v, evo_source, evolver) -> dict:
        return {**refresh(source_id, teacher_v), **evo["refresh"](evo_source, evolver)}

    return {"refresh": refresh_all, "inputs": [source, teacher] + evo["inputs"],
            "outputs": [source, teacher, seeds_info, job_id] + evo["outputs"]}


def _build_evol(studio) -> dict:
    """The Evol-Instruct section: evolve seeds with WizardLM's in-depth and in-breadth operations."""
    store = studio.store
    with gr.Accordion("Evol-Instruct: evolve seeds before expanding them (optional)", open=False, elem_id="evol-acc"):
        gr.Markdown("WizardLM's Evol-Instruct rewrites instructions to be harder (**in depth**: add constraints, "
                    "deepen, concretize, more reasoning steps) or new and rarer (**in breadth**). Rewrites that "
                    "fail WizardLM's elimination rules (no new information, copied prompt words, too short, a "
                    "refusal) are dropped and listed with the reason. New seeds keep a link to their parent and go "
                    "to a source *evolved from …*, ready to expand.")
        with gr.Row():
            e_source = gr.Dropdown(source_choices(studio, with_all=False), label="Seeds from source",
                                   elem_id="evol-source")
            e_n = gr.Number(value=5, precision=0, minimum=1, label="How many seeds", elem_id="evol-n")
            names = model_choices(studio)
            e_model = gr.Dropdown(names, value=names[0] if names else None, label="Evolver (any registry model)",
                                  elem_id="evol-model")
        with gr.Row():
            e_ops = gr.CheckboxGroup([(v, k) for k, v in OPERATIONS.items()], value=list(OPERATIONS),
                                     label="Operations (taken in turn)", elem_id="evol-ops")
        with gr.Row():
            e_gen = gr.Slider(1, 5, value=1, step=1, label="Generations (evolve the evolved again)",
                              elem_id="evol-generations")
            e_max = gr.Slider(16, 2048, value=256, step=16, label="Max new tokens", elem_id="evol-max-new")
            e_temp = gr.Slider(0, 2, value=0.7, step=0.05, label="Temperature", elem_id="evol-temperature")
            e_respond = gr.Checkbox(True, label="Also answer each new instruction (as WizardLM does)",
                                    elem_id="evol-respond")
        e_start = gr.Button("Start evolving", variant="primary", elem_id="evol-start")
        e_panel = JobPanel(studio, "evol", table=False, empty="No evolution running.", job_label="Evolution job id")
        e_job = e_panel.job
        e_new = gr.Dataframe(interactive=False, label="New seeds of this job (newest first)", elem_id="evol-new",
                             max_height=300)
        e_dropped = gr.Dataframe(interactive=False, label="Eliminated, with the rejected text (retried on resume)",
                                 elem_id="evol-dropped", max_height=300, wrap=True)
        e_timer = gr.Timer(1.5, active=True)

    @guarded(studio, "editor", "Running an evolution")
    def start(source_id, n, model, ops, gens, max_new, temp, respond):
        if not source_id:
            raise ValueError("choose a source with seed instructions")
        if not ops:
            raise ValueError("choose at least one operation")
        cfg = EvolConfig(evolver=model, operations=list(ops), generations=int(gens), respond=bool(respond),
                         sampling=GenParams(max_new_tokens=int(max_new), temperature=float(temp)),
                         response=GenParams(max_new_tokens=int(max_new), temperature=float(temp)))
        jid = studio.evolve(cfg, n=int(n or 0), source_id=int(source_id))
        return {e_job: jid, **poll(jid)}

    def poll(jid) -> dict:
        out = e_panel.view(jid)
        if jid:
            out[e_new] = store.evolved_seeds(int(jid))
            out[e_dropped] = pd.DataFrame(store.job_item_failures(int(jid)),
                                          columns=["seed", "reason", "rejected text"])
        return out

    outputs = e_panel.outputs + [e_new, e_dropped]
    e_start.click(start, [e_source, e_n, e_model, e_ops, e_gen, e_max, e_temp, e_respond], outputs).then(
        None, None, None, js=scroll_js("#evol-progress", "center"))
    e_panel.wire(poll, [e_job], outputs)
    e_timer.tick(guarded(studio, "viewer", "Following an evolution")(poll), [e_job], outputs,
                 show_progress="hidden")

    def refresh(source_id, model) -> dict:
        choices = source_choices(studio, with_all=False)
        ids = [c[1] for c in choices]
        names_now = model_choices(studio)
        return {e_source: gr.update(choices=choices, value=source_id if source_id in ids else (ids[0] if ids
                                                                                               else None)),
                e_model: gr.update(choices=names_now, value=model if model in names_now else (
                    names_now[0] if names_now else None))}

    return {"refresh": refresh, "inputs": [e_source, e_model], "outputs": [e_source, e_model]}
