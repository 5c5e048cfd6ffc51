from coe.cli import app

app(prog_name="coe")
