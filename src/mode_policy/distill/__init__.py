"""VDD: distil a diffusion policy into a one-step mixture of Gaussian experts (Zhou et al., NeurIPS 2024).

result = distill("runs/mt10", out="runs/mt10-vdd", experts=4, steps=3000)
student = VDDPolicy.from_pretrained("runs/mt10-vdd/policy")   # the "vdd" policy type (mode_policy.policies)
"""

from mode_policy.distill.teacher import TeacherError, load_teacher
from mode_policy.distill.trainer import DistillResult, distill
from mode_policy.policies.vdd.configuration import VDDPolicyConfig
from mode_policy.policies.vdd.modeling import VDDPolicy

__all__ = ["DistillResult", "TeacherError", "VDDPolicy", "VDDPolicyConfig", "distill", "load_teacher"]
