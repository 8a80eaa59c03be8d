using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

public static class LossRules
{
    public static void Register(GradientRegistry r)
    {
    }
}
