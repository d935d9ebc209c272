import { defineConfig } from "vite";

// The gateway serves dist/ (index.html + assets/); nothing is fetched from elsewhere at run time.
export default defineConfig({
  build: { outDir: "dist", emptyOutDir: true, assetsDir: "assets", sourcemap: false },
});
