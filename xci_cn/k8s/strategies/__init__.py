"""Rollout strategies. Each moves a service graph onto the cluster and, for
bluegreen and canary, traffic between versions through Istio:

* rolling.py: apply and wait;
* bluegreen.py: new version beside the old, switch all traffic at once;
* canary.py: step the weights (10 -> 25 -> 50 -> 100) with a hook between steps;
* graph.py: a canary of several services as one unit, in lockstep, rolled back
  in reverse dependency order;
* lifecycle.py: promote and rollback (with the read-back check), shared by all.
"""
