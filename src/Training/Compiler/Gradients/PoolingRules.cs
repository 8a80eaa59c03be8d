using OrtFinetune.Onnx;
using OrtFinetune.Training.Compiler.Autodiff;

namespace OrtFinetune.Training.Compiler.Gradients;

public static class PoolingRules
{
    public static void Register(GradientRegistry r)
    {
    }
}
