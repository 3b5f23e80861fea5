"""Jenkins and Gerrit integration: the JJB job tree (``jjb``), job management
through python-jenkins (``jobs``), scenario detection for a Gerrit change
(``gerrit``) and the click commands that expose them (``commands``).

Only ``jjb`` imports jenkins_jobs and only ``jobs`` imports jenkins; both are
imported lazily by the commands so ``xci-cn --help`` stays fast.
"""
