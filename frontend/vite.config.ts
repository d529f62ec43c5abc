import { defineConfig } from "vite";

// `npm run build` writes dist/, which attune-api serves at / (ATTUNE_DASHBOARD_DIR).
// `npm run dev` serves the sources with the API proxied to a running attune-api.
export default defineConfig({
  base: "/",
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false, chunkSizeWarningLimit: 400 },
  server: {
    proxy: {
      "/v1": process.env.ATTUNE_API_URL ?? "http://127.0.0.1:8080",
      "/readyz": process.env.ATTUNE_API_URL ?? "http://127.0.0.1:8080",
      "/openapi.json": process.env.ATTUNE_API_URL ?? "http://127.0.0.1:8080",
    },
  },
});
