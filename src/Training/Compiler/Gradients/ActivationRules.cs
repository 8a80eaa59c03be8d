using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

public static class ActivationRules
{
    public static void Register(GradientRegistry r)
    {
    }
}
