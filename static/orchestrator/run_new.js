// New run: show only the chosen team's agents (the form works without this too:
// the server refuses agents of another team with a form error).

const team = document.querySelector("#id_team");
const items = [...document.querySelectorAll("#run-agents li[data-team]")];
const none = document.querySelector("#run-agents-none");

function showTeam() {
  let shown = 0;
  for (const item of items) {
    const mine = item.dataset.team === team.value;
    item.hidden = !mine;
    if (!mine) item.querySelector("input").checked = false;
    shown += mine ? 1 : 0;
  }
  none.hidden = shown > 0;
}

if (team) {
  team.addEventListener("change", showTeam);
  showTeam();
}
