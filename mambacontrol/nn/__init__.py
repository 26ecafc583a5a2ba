"""Neural-network building blocks (torch). The saved-component base lives in
:mod:`mambacontrol.nn.component` and is imported from there (it needs diffusers)."""
